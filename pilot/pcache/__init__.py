"""pcache: one file cache shared by every pilot on a worker node.

Stage-in asks the cache before any mover. A hit links the cached file into the job's work dir; a miss
fetches through the mover into the cache, then links. Pilots are separate processes: they share the
cache through the file system only.

Layout under the queue's `pcache` directory (mode 0700: payloads under other uids see nothing of it):
  index.sqlite             one row per entry (WAL mode): scope, lfn, guid, size, checksum, state, last use;
                           and the counters (hits, misses, bytes saved, evictions, ...)
  space.lock               held while room is made for a new entry (eviction and reservation)
  data/<hh>/<hash>         a complete, verified file (mode 0444); <hash> is the SHA-256 of scope and LFN,
                           so no name from a job definition ever becomes a path
  data/<hh>/<hash>.fill    an entry being written; renamed to its final name only when complete
  data/<hh>/<hash>.lock    the entry's lock (flock): shared while the file is verified and linked,
                           exclusive while it is written or evicted. A lock dies with its process, so a
                           crashed holder never blocks anyone; what it left is cleaned up by the next
                           pilot that takes the lock.

An entry is complete only when its row says so and its file, checked at every hit, still has the recorded
size and checksum; anything else (a pilot killed while filling, a corrupted file) is evicted and fetched
again.

Cached files are read-only to payloads. A hard link shares the inode, so the cached copy is protected by
its mode (0444, owned by the pilot) only from a payload that cannot change that mode: one running under
another uid that is not root (the queue's identity `uid` or `glexec`, or a pilot that is not root).
`link: auto` (the default) links unless the payload may run as root (a root pilot with identity `none`),
which gets a copy. `hardlink` always links: a payload of the pilot's own uid that chmods and writes its
input is caught by the checksum at the next hit and the entry fetched again, but jobs holding a link to
it meanwhile see the change. `copy` never links.

Modules: `settings` (what the queue configures), `cache` (lookup, fill, the report), `space` (the limit,
reservation and LRU eviction), `index` (the SQLite index), `lock` (the per-entry lock), `files` (entry
names, link or copy with checksum), `hook` (the staging loop's hook).
"""

from pilot.pcache.cache import Pcache, Staged
from pilot.pcache.files import CacheKey
from pilot.pcache.hook import CacheHook
from pilot.pcache.index import COUNTERS, Index
from pilot.pcache.lock import EntryLock
from pilot.pcache.settings import LINK_MODES, PcacheSettings, parse_limit

__all__ = ["COUNTERS", "LINK_MODES", "CacheHook", "CacheKey", "EntryLock", "Index", "Pcache", "PcacheSettings",
           "Staged", "parse_limit"]
