"""Stage 6, search: the FAISS embedding index (:mod:`.vectors`), exact Hamming searches
(:mod:`.hamming`), duplicate groups (:mod:`.groups`) and the queries on top (:mod:`.queries`)."""
