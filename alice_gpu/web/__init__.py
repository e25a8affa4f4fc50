"""The web app (``alice-gpu serve``): see, search and act on what the index knows.

:mod:`.server` (the process: it holds the index, answers the CLI through it, and runs
uvicorn), :mod:`.app` (the FastAPI app: the pages and the JSON API under ``/api``),
:mod:`.security` (loopback, token, Host allow-list, CSRF, headers), :mod:`.groups`
(duplicate groups computed in the background and stored with the index state),
:mod:`.charts` (SVG made on the server). Every route calls :mod:`alice_gpu.api`;
nothing here opens the store. FastAPI, uvicorn, Jinja2 and python-multipart are the
``[serve]`` extra, imported only by ``serve``.
"""
