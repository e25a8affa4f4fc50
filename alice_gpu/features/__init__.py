"""Stage 4, features: perceptual hashes and embeddings of decoded images.

* :mod:`.hashes_np` the four hashes in numpy (decode workers; torch-free),
  :mod:`.worker` the task a CPU decode worker runs (decode, then hash);
* :mod:`.hashes_torch` the same hashes as batched torch ops on any device;
* :mod:`.modelcfg` (torch-free metadata) and :mod:`.models` the model registry;
* :mod:`.extractor` the stage callable: a batch of decoded files in, stored rows
  out, on one ``torch.device``.

This package's ``__init__`` imports nothing, so a decode worker never loads torch.
"""
