"""Remote: the process that holds an index answers other processes for it.

:mod:`.wire` (the socket, frames, size caps, who holds the index), :mod:`.codec`
(the API's typed answers as JSON), :mod:`.server` (the holder's side),
:mod:`.client` (the asking side). Below the API: the API decides what is asked
and answers it (:mod:`alice_gpu.api.routing`, :mod:`alice_gpu.api.held`).
"""
