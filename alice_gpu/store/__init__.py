"""Stage 5, store: DuckDB is the source of truth; one index is one folder.

:class:`Store` opens a folder (:mod:`.schema` checks, creates and migrates it),
:mod:`.reads` and :mod:`.writes` hold what the other stages ask of it.
"""

from .paths import from_db, to_db
from .schema import DB_FILE, MANIFEST_FILE, SCHEMA_VERSION, stored_version
from .store import Store
from .writes import WriteResult

__all__ = ["DB_FILE", "MANIFEST_FILE", "SCHEMA_VERSION", "Store", "WriteResult", "from_db",
           "stored_version", "to_db"]
