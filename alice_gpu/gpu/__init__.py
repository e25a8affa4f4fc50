"""The CPU/GPU split, in one place: device selection and facts (:mod:`.devices`),
pinned staging of batches (:mod:`.staging`), JPEG decoding on the GPU
(:mod:`.nvjpeg`) and our CUDA kernels (:mod:`.kernels`, CuPy, torch-free).

This ``__init__`` imports nothing, so using the kernels never loads torch.
"""
