"""WordNet 3.0 for METEOR's synonym stage, offline: NLTK's own WordNet data, else Debian's `wordnet-base`.

Debian's package ships the WordNet 3.0 database (`/usr/share/wordnet`: data.*, index.*, *.exc, 28 MB) but not the
`lexnames` list NLTK's reader opens first, and NLTK refuses links that leave a corpus folder; so a private folder
(0700, in the user's cache) holds a copy of the database plus `lexnames` written from the table below (WordNet
3.0's lexicographer files, `lexnames(5WN)`).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

DEBIAN_WORDNET = Path("/usr/share/wordnet")
# WordNet 3.0's 45 lexicographer files, in file-number order (`man 5WN lexnames`).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
INSTALL_HINT = "apt-get install wordnet-base (Debian/Ubuntu), or nltk.download('wordnet')"


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "mobilevideogpt" / "wordnet-3.0"


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    temporary.replace(path)


def _private_folder(folder: Path) -> Path:
    """`folder` holding a copy of the Debian database and a `lexnames` file; created 0700 and owned by us."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(f"{folder} is not private to this user; remove it and retry")
    for source in DEBIAN_WORDNET.iterdir():
        copy = folder / source.name
        if source.is_file() and (not copy.is_file() or copy.stat().st_size != source.stat().st_size):
            _write_atomically(copy, lambda temporary, source=source: shutil.copyfile(source, temporary))
    lexnames = folder / "lexnames"
    if not lexnames.is_file():
        text = "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
        _write_atomically(lexnames, lambda temporary: temporary.write_text(text))
    return folder


def load_wordnet():
    """(a WordNet reader, where it came from), or (None, why not) when no WordNet data is installed."""
    try:
        import nltk
        from nltk.corpus import wordnet
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        return None, "nltk is not installed"

    class _Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # Mapping to NLTK's own WordNet serves only multilingual (OMW) lookups, which METEOR never makes;
            # NLTK 3.10 would otherwise demand its downloadable copy here.
            return None

    try:
        wordnet.ensure_loaded()
        return wordnet, "NLTK WordNet data"
    except LookupError:
        pass
    if not (DEBIAN_WORDNET / "data.noun").is_file():
        return None, f"no WordNet data found ({INSTALL_HINT})"
    try:
        folder = _private_folder(_cache_dir())
        # NLTK reads corpora only below its data paths.
        if str(folder) not in nltk.data.path:
            nltk.data.path.append(str(folder))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The multilingual functions are not available")
            return _Reader(str(folder), None), f"WordNet 3.0 from {DEBIAN_WORDNET}"
    except (OSError, ValueError) as err:
        logger.warning("cannot open WordNet from %s: %s", DEBIAN_WORDNET, err)
        return None, f"WordNet in {DEBIAN_WORDNET} is unusable ({err})"
