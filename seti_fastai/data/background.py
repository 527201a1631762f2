"""Background matching across splits, and subtraction of a matched partner's background.

The real backgrounds were cut from wider observations into overlapping 256-channel bands, so most cadences share
their background with others, shifted in frequency. Matching finds those partners; subtracting a partner (after
fitting the per-panel affine map between the two) leaves what the cadence alone carries, such as a needle.

How matching works:
1. Fingerprint: rows 0..31 of the OFF panels 1 and 5 (they hold no needles), read through a memory map. Each column
   of each segment gives 32 sign bits, `value > column mean`, which no per-panel affine map (each panel was
   standardised on its own) changes: two 32-bit band hashes per channel, one uint64 per channel, 2 KB per cadence.
2. Candidates: for each band, every (cadence, channel) hash is sorted once; the key channels of every cadence (every
   16th, so any overlap of 16 channels or more holds one) are looked up; a hash seen in very many places is skipped.
   (Every overlap also holds channel 0 of one of the two, so the other keys are redundancy against a flipped bit.)
   An equal hash at channel i of `a` and channel j of `b` proposes the pair (a, b) at shift j - i.
3. Verify: similarity = 2 * (share of equal bits over every overlapping channel's 64 bits) - 1: about 0 for
   unrelated cadences, about 1 for a true overlap. Each pair keeps its best shift; pairs at or above
   `min_similarity` with at least `min_overlap` overlapping channels are listed in both directions.

Shift convention: channel c of `id` shows the same frequency as channel c + shift of `partner` (where both exist).
The two overlap on 256 - |shift| channels. For the synthetic set (cadences cut from a strip at `offset`),
shift = offset_id - offset_partner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from seti_fastai.data.cadence import N_CHANNELS, SPLITS, KaggleData, open_cadence, split_layout
from seti_fastai.errors import CadenceFileError, ConfigError, DataLayoutError

FINGERPRINT_PANELS = (1, 5)  # OFF panels: no needles; far apart in time, so two independent hashes
FINGERPRINT_ROWS = 32  # one 32-bit hash per channel and panel
KEY_STEP = 16  # every 16th channel is a key: any overlap of >= 16 channels holds one
MAX_HASH_COUNT = 64  # a hash value seen in more places is uninformative (e.g. constant columns) and skipped
# Measured on 3,000 realistic synthetic cadences: true pairs (overlap >= 16) score >= 0.93, unrelated pairs and
# wrong shifts of one strip <= 0.12 (200,000 drawn at random; noise std at 16 channels is 1 / 32); 0.5 splits the gap.
DEFAULT_MIN_SIMILARITY = 0.5
DEFAULT_MIN_OVERLAP = 16  # fewest overlapping channels of a pair (one key channel in KEY_STEP)
QUERY_CHUNK = 1 << 16  # key queries expanded at a time (bounds the memory of the hits)
FIT_ROW_STEP = 4  # subtraction fits each panel's affine map on every 4th row (69 x overlap pixels)
VERIFY_CHUNK = 2048  # candidate pairs verified per vectorised step (2048 x 256 x 8 bytes = 4 MB per array)
MATCH_COLUMNS = ["id", "split", "partner", "partner_split", "shift", "overlap", "similarity"]

Progress = Callable[[int], None] | None


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints


def _read_rows(path: Path) -> np.ndarray:
    """The fingerprint rows of one cadence file, float32 (len(FINGERPRINT_PANELS), FINGERPRINT_ROWS or fewer, 256),
    checked."""
    arr = open_cadence(path, mmap=True)
    rows = np.asarray(arr[list(FINGERPRINT_PANELS), :FINGERPRINT_ROWS], dtype=np.float32)
    if not np.isfinite(rows).all():
        raise CadenceFileError(f"{path}: NaN or infinite value(s)")
    return rows


def _sign_hashes(segment: np.ndarray) -> np.ndarray:
    """(R, C) float, R <= 32 -> (C,) uint32: bit r of channel c is set when row r is above the column's mean (cadences
    of fewer than 32 rows leave the last bits clear)."""
    bits = segment > segment.mean(axis=0, keepdims=True)
    bits = np.pad(bits, ((0, FINGERPRINT_ROWS - len(bits)), (0, 0)))
    packed = np.packbits(bits, axis=0)  # (4, C) uint8, big-endian within each byte
    return packed.T.copy().view(">u4").reshape(-1).astype(np.uint32)


def fingerprint(path: Path | str) -> np.ndarray:
    """(256,) uint64 fingerprint of one cadence file: panel 1's band hash in the high 32 bits, panel 5's in the low."""
    rows = _read_rows(Path(path))
    high, low = (_sign_hashes(segment).astype(np.uint64) for segment in rows)
    return (high << np.uint64(32)) | low


def _fingerprint_chunk(paths: list[str]) -> np.ndarray:
    return np.stack([fingerprint(p) for p in paths])


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fingerprints(paths: list[Path] | list[str], workers: int = 0, progress: Progress = None) -> np.ndarray:
    """(n, 256) uint64 fingerprints of `paths`, in order; `workers` > 1 uses that many processes."""
    names = [str(p) for p in paths]
    out = np.zeros((len(names), N_CHANNELS), np.uint64)
    chunks = list(_chunks(names, 256))
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results: Iterator[np.ndarray] = pool.map(_fingerprint_chunk, chunks)
            _fill(out, results, progress)
    else:
        _fill(out, map(_fingerprint_chunk, chunks), progress)
    return out


def _fill(out: np.ndarray, results: Iterator[np.ndarray], progress: Progress) -> None:
    start = 0
    for block in results:
        out[start : start + len(block)] = block
        start += len(block)
        if progress is not None:
            progress(len(block))


# ----------------------------------------------------------------------------------------------------------------
# Candidates and verification


def _sorted_band(fps: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, key-channel queries) of one band (0: panel 1, 1: panel 5).

    A key is one uint64 per (cadence, channel): the 32-bit hash in the high half, cadence * 256 + channel in the low.
    Built in place, so matching needs one such array (2 KB per cadence) beside the fingerprints.
    """
    keys = fps >> np.uint64(32 * (1 - band))
    keys &= np.uint64(0xFFFFFFFF)
    query = keys[:, ::KEY_STEP].reshape(-1) << np.uint64(32)
    keys <<= np.uint64(32)
    for start in range(0, len(keys), 4096):
        block = keys[start : start + 4096]
        block |= np.arange(start * N_CHANNELS, start * N_CHANNELS + block.size, dtype=np.uint64).reshape(block.shape)
    keys = keys.reshape(-1)
    keys.sort()
    return keys, query


def _pair_codes(a: np.ndarray, b: np.ndarray, shift: np.ndarray, n: int, min_overlap: int) -> np.ndarray:
    """Unique int64 codes of (a, b, shift) with a < b (the pair turned round when needed), a != b, enough overlap."""
    keep = (a != b) & (N_CHANNELS - np.abs(shift) >= min_overlap)
    a, b, shift = a[keep], b[keep], shift[keep]
    swap = a > b
    a, b, shift = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, -shift, shift)
    return np.unique((a * n + b) * (2 * N_CHANNELS) + shift + N_CHANNELS)


def _band_codes(fps: np.ndarray, band: int, min_overlap: int, max_count: int) -> np.ndarray:
    """Candidate codes proposed by equal hashes of one band: key channel i of a equals channel i + shift of b."""
    keys, query = _sorted_band(fps, band)
    origin = np.argsort(query, kind="stable")  # sorted queries search the sorted keys ~10x faster (cache)
    query = query[origin]
    codes = []
    for start in range(0, len(query), QUERY_CHUNK):
        q, chunk = origin[start : start + QUERY_CHUNK], query[start : start + QUERY_CHUNK]
        lo = np.searchsorted(keys, chunk, side="left")
        count = np.searchsorted(keys, chunk | np.uint64(0xFFFFFFFF), side="right") - lo
        count[count > max_count + 1] = 0  # the query finds itself too
        first = np.repeat(lo - np.cumsum(count) + count, count)
        pos = (keys[first + np.arange(len(first))] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        q = np.repeat(q, count)
        a, i = q // (N_CHANNELS // KEY_STEP), (q % (N_CHANNELS // KEY_STEP)) * KEY_STEP
        codes.append(_pair_codes(a, pos // N_CHANNELS, pos % N_CHANNELS - i, len(fps), min_overlap))
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)


def candidates(fps: np.ndarray, min_overlap: int, max_count: int = MAX_HASH_COUNT) -> np.ndarray:
    """Unique candidate (a, b, shift) rows, int64 (m, 3), with a < b and overlap 256 - |shift| >= min_overlap."""
    n = len(fps)
    if n * N_CHANNELS >= 2**32:
        raise ConfigError(f"{n} cadences: at most {2**32 // N_CHANNELS - 1} can be matched at once")
    codes = np.unique(np.concatenate([_band_codes(fps, band, min_overlap, max_count) for band in (0, 1)]))
    pair, shift = np.divmod(codes, 2 * N_CHANNELS)
    return np.stack([pair // n, pair % n, shift - N_CHANNELS], axis=1)


def similarity(fps: np.ndarray, a: np.ndarray, b: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """2 * (share of equal fingerprint bits over the overlapping channels) - 1, per (a, b, shift); float64 (0 where
    the two do not overlap)."""
    out = np.empty(len(a), np.float64)
    channels = np.arange(N_CHANNELS)
    for s in range(0, len(a), VERIFY_CHUNK):
        ca, cb, cd = a[s : s + VERIFY_CHUNK], b[s : s + VERIFY_CHUNK], shift[s : s + VERIFY_CHUNK]
        other = channels[None, :] + cd[:, None]
        valid = (other >= 0) & (other < N_CHANNELS)
        diff = np.bitwise_count(fps[ca] ^ fps[cb[:, None], np.clip(other, 0, N_CHANNELS - 1)])
        differing = np.where(valid, diff, 0).sum(axis=1)
        bits = 64.0 * valid.sum(axis=1)
        out[s : s + VERIFY_CHUNK] = np.where(bits > 0, 1.0 - 2.0 * differing / np.maximum(bits, 1.0), 0.0)
    return out


def match_fingerprints(
    fps: np.ndarray, min_overlap: int = DEFAULT_MIN_OVERLAP, min_similarity: float = DEFAULT_MIN_SIMILARITY
) -> pd.DataFrame:
    """Matched pairs of fingerprint rows, once each (a < b): columns a, b, shift, overlap, similarity (thresholds
    checked by the caller, `match_cadences`)."""
    cand = candidates(fps, min_overlap)
    a, b, shift = cand.T
    pairs = pd.DataFrame({"a": a, "b": b, "shift": shift, "overlap": N_CHANNELS - np.abs(shift)})
    pairs["similarity"] = similarity(fps, a, b, shift)
    pairs = pairs.sort_values(["a", "b", "similarity"], ascending=[True, True, False], kind="stable")
    pairs = pairs.drop_duplicates(["a", "b"])
    return pairs[pairs["similarity"] >= min_similarity].reset_index(drop=True)


def check_thresholds(min_overlap: int, min_similarity: float) -> None:
    if not 1 <= min_overlap <= N_CHANNELS:
        raise ConfigError(f"min_overlap must be in 1..{N_CHANNELS}, got {min_overlap}")
    if not -1.0 <= min_similarity <= 1.0:
        raise ConfigError(f"min_similarity must be in [-1, 1], got {min_similarity}")


# ----------------------------------------------------------------------------------------------------------------
# Matching a data folder


def cadence_index(kaggle: KaggleData, splits: list[str]) -> pd.DataFrame:
    """Every cadence of `splits`: columns split, id, path (one row per file, in split then file order)."""
    frames = []
    for split in splits:
        ids = kaggle.read_labels(split)["id"]
        frames.append(pd.DataFrame({"split": split, "id": ids, "path": [str(p) for p in kaggle.paths(split, ids)]}))
    return pd.concat(frames, ignore_index=True)


def pairs_to_matches(pairs: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Both directions of each matched pair as `matches.csv` rows, sorted by id then similarity (descending)."""
    forward = pairs.rename(columns={"a": "i", "b": "j"})
    backward = pairs.rename(columns={"a": "j", "b": "i"}).assign(shift=-pairs["shift"])
    both = pd.concat([forward, backward], ignore_index=True)
    rows = pd.DataFrame(
        {
            "id": index["id"].to_numpy()[both["i"]],
            "split": index["split"].to_numpy()[both["i"]],
            "partner": index["id"].to_numpy()[both["j"]],
            "partner_split": index["split"].to_numpy()[both["j"]],
            "shift": both["shift"].astype(np.int64),
            "overlap": both["overlap"].astype(np.int64),
            "similarity": both["similarity"].round(4),
        }
    )
    rows = rows.sort_values(["id", "similarity", "overlap"], ascending=[True, False, False], kind="stable")
    return rows.reset_index(drop=True)[MATCH_COLUMNS]


def splits_to_match(kaggle: KaggleData, splits: str | None = None) -> list[str]:
    """The splits named in a comma list (each once, in order), or every split the data folder holds."""
    chosen = [s for s in SPLITS if kaggle.has_split(s)]
    if splits:
        chosen = list(dict.fromkeys(s.strip() for s in splits.split(",") if s.strip()))
    if not chosen:
        raise DataLayoutError(f"{kaggle.root}: no split to match (no {', '.join(v.labels for v in SPLITS.values())})")
    for split in chosen:
        split_layout(split)
    return chosen


def match_cadences(
    kaggle: KaggleData,
    splits: list[str],
    min_overlap: int = DEFAULT_MIN_OVERLAP,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    workers: int = 0,
    progress: Progress = None,
) -> pd.DataFrame:
    """Find the cadences of `splits` that share a background, with their shift: the rows of `matches.csv`."""
    check_thresholds(min_overlap, min_similarity)
    index = cadence_index(kaggle, splits)
    fps = fingerprints(index["path"].tolist(), workers=workers, progress=progress)
    return pairs_to_matches(match_fingerprints(fps, min_overlap, min_similarity), index)


def find_or_match(
    data: Path | str, work_dir: Path | str, say: Callable[[str], None] | None = None, workers: int = 0
) -> Path:
    """The `matches.csv` of `data` (found beside it or in `work_dir`, as `derived_path` finds derived files); when
    there is none, match every split the folder holds (seconds for thousands of cadences), write it there and say
    so first (`say`, one line). What `--background auto` resolves to."""
    from seti_fastai.io import atomic_write_csv, derived_path

    path = derived_path(data, "matches.csv", work_dir)
    if path.is_file():
        return path
    kaggle = KaggleData(data)
    chosen = splits_to_match(kaggle)
    if say is not None:
        say(f"--background auto: no matches.csv for {kaggle.root}; matching {', '.join(chosen)} first -> {path}")
    return atomic_write_csv(match_cadences(kaggle, chosen, workers=workers), path)


# ----------------------------------------------------------------------------------------------------------------
# Reading matches.csv and using it


def _bad_row(path: Path, mask: pd.Series, what: str, values: pd.Series) -> None:
    if mask.any():
        i = int(np.flatnonzero(mask.to_numpy())[0])
        raise DataLayoutError(f"{path}: row {i + 2}: {what} {values.iloc[i]!r}")


def _check_known(path: Path, df: pd.DataFrame, known_ids: set[str]) -> None:
    """One error naming the first row whose id or partner is not in `known_ids`."""
    unknown = pd.DataFrame({col: ~df[col].isin(known_ids) for col in ("id", "partner")})
    rows = np.flatnonzero(unknown.any(axis=1).to_numpy())
    if len(rows):
        i = int(rows[0])
        col = "id" if unknown["id"].iloc[i] else "partner"
        raise DataLayoutError(
            f"{path}: row {i + 2}: unknown {col} {df[col].iloc[i]!r} (a matches file of other data? "
            "make this data's with `seti-fastai match DATA`)"
        )


def read_matches(path: Path | str, known_ids: set[str] | None = None) -> pd.DataFrame:
    """Read and validate `matches.csv`; with `known_ids`, every id and partner must be one of them."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"{path}: file not found (make it with `seti-fastai match`)")
    try:
        df = pd.read_csv(path, dtype={"id": str, "partner": str, "split": str, "partner_split": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataLayoutError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from e
    missing = [c for c in MATCH_COLUMNS if c not in df.columns]
    if missing:
        raise DataLayoutError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}"
        )
    for col in ("id", "partner"):
        _bad_row(path, df[col].isna(), f"{col} is empty:", df[col])
    for col in ("split", "partner_split"):
        _bad_row(path, ~df[col].isin(list(SPLITS)), f"{col} is not a split:", df[col])
    for col in ("shift", "overlap", "similarity"):
        values = pd.to_numeric(df[col], errors="coerce")
        _bad_row(path, values.isna(), f"{col} is not a number:", df[col])
        df[col] = values
    _bad_row(path, df["shift"].abs() >= N_CHANNELS, "shift out of range:", df["shift"])
    _bad_row(path, df["overlap"] != N_CHANNELS - df["shift"].abs(), "overlap is not 256 - |shift|:", df["overlap"])
    if known_ids is not None:
        _check_known(path, df, known_ids)
    df["shift"], df["overlap"] = df["shift"].astype(np.int64), df["overlap"].astype(np.int64)
    return df[MATCH_COLUMNS].reset_index(drop=True)


def partner_paths(matches: pd.DataFrame, kaggle: KaggleData, max_partners: int = 2) -> dict[str, list[tuple[str, int]]]:
    """Cadence id -> [(partner file path, shift), ...], best first (largest overlap, then highest similarity)."""
    ranked = matches.sort_values(["id", "overlap", "similarity"], ascending=[True, False, False], kind="stable")
    ranked = ranked.groupby("id", sort=False).head(max_partners)
    out: dict[str, list[tuple[str, int]]] = {}
    for row in ranked.itertuples(index=False):
        path = str(kaggle.cadence_path(row.partner_split, row.partner))
        out.setdefault(row.id, []).append((path, int(row.shift)))
    return out


def _overlap_slices(shift: int) -> tuple[slice, slice]:
    """(cadence channels, partner channels) that show the same frequencies at `shift`."""
    lo = max(0, -shift)
    hi = max(lo, min(N_CHANNELS, N_CHANNELS - shift))  # empty when |shift| >= 256
    return slice(lo, hi), slice(lo + shift, hi + shift)


def _least_squares(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares (slope, intercept) of y ~ x per panel: arrays (P, N), results (P,)."""
    n = weight.sum(axis=1)
    xm, ym = np.einsum("pn,pn->p", weight, x) / n, np.einsum("pn,pn->p", weight, y) / n
    wdx = weight * (x - xm[:, None])
    var, cov = np.einsum("pn,pn->p", wdx, x), np.einsum("pn,pn->p", wdx, y)
    slope = np.divide(cov, var, out=np.zeros_like(var), where=var > 0)
    return slope, ym - slope * xm


def _affine_fit(x: np.ndarray, y: np.ndarray, clip: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-panel (slope, intercept) of y ~ x, float32 (P, 1, 1), refitted once without the pixels whose residual
    passes `clip` std (a needle's). Fitted in float64 on every FIT_ROW_STEP-th row: two parameters need few pixels.
    """
    x = x[:, ::FIT_ROW_STEP].reshape(len(x), -1).astype(np.float64)
    y = y[:, ::FIT_ROW_STEP].reshape(len(y), -1).astype(np.float64)
    slope, intercept = _least_squares(x, y, np.ones_like(x))
    residual = y - (slope[:, None] * x + intercept[:, None])
    keep = np.abs(residual) <= clip * residual.std(axis=1, keepdims=True) + 1e-6
    keep |= keep.mean(axis=1, keepdims=True) < 0.5  # too many outliers: keep every pixel
    slope, intercept = _least_squares(x, y, keep.astype(np.float64))
    return slope.astype(np.float32)[:, None, None], intercept.astype(np.float32)[:, None, None]


def subtract_background(cadence: np.ndarray, partners: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Subtract each partner's background from `cadence`, float32 (6, 273, 256) in and out.

    For each panel and each partner in order, the affine map partner -> cadence is fitted on their overlapping
    channels (least squares, refitted once without outlying pixels such as a needle's) and subtracted there;
    channels an earlier partner covered are left to it. Channels no partner covers (all of them when there is no
    partner) pass unchanged. A needle in a partner leaves a negative "shadow".
    """
    cadence = np.asarray(cadence, dtype=np.float32)
    out = cadence.copy()
    covered = np.zeros(N_CHANNELS, bool)
    for partner, shift in partners:
        own, other = _overlap_slices(int(shift))
        fresh = ~covered[own]
        if not fresh.any():
            continue
        slope, intercept = _affine_fit(partner[:, :, other], cadence[:, :, own])
        residual = cadence[:, :, own] - (slope * partner[:, :, other].astype(np.float32) + intercept)
        np.copyto(out[:, :, own], residual, where=fresh)
        covered[own] = True
    return out


# ----------------------------------------------------------------------------------------------------------------
# Scoring against the synthetic set's truth


def true_pairs(meta: pd.DataFrame, min_overlap: int = DEFAULT_MIN_OVERLAP) -> pd.DataFrame:
    """Ordered (id, partner, shift) pairs of cadences cut from one strip, overlapping on >= min_overlap channels."""
    cols = meta[["id", "strip", "offset"]]
    pairs = cols.merge(cols, on="strip", suffixes=("", "_p"))
    pairs = pairs[pairs["id"] != pairs["id_p"]]
    shift = pairs["offset"] - pairs["offset_p"]
    pairs = pairs.assign(partner=pairs["id_p"], shift=shift)
    return pairs[N_CHANNELS - shift.abs() >= min_overlap][["id", "partner", "shift"]].reset_index(drop=True)


def matcher_scores(matches: pd.DataFrame, meta: pd.DataFrame, min_overlap: int = DEFAULT_MIN_OVERLAP) -> dict:
    """Precision and recall of `matches` against the truth in `meta` (split,id,strip,offset of the cadences matched).

    A predicted row is right when its pair shares a strip, overlaps, and its shift is offset_id - offset_partner;
    recall is over the true pairs overlapping on >= min_overlap channels. Both count ordered pairs (each direction
    once).
    """
    keys = ["id", "partner", "shift"]
    anywhere, truth = true_pairs(meta, 1), true_pairs(meta, min_overlap)
    hit = matches[keys].merge(anywhere, on=keys, how="left", indicator=True)["_merge"] == "both"
    n_pred, n_true, n_right = len(matches), len(truth), int(hit.sum())
    covered = matches[keys].merge(truth, on=keys).drop_duplicates()
    return {
        "precision": n_right / n_pred if n_pred else 1.0,
        "recall": len(covered) / n_true if n_true else 1.0,
        "predicted": n_pred,
        "right": n_right,
        "true": n_true,
        "found": len(covered),
    }
