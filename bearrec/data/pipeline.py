"""From interactions to examples: exact duplicates dropped, the iterative k-core, sliding windows of history, and
the split (8:1:1 by target time, or leave-one-out per user)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bearrec.checks import short
from bearrec.data.cleaning import DataWarning, FixLog, clean_catalog, warn_titles_equal_to_ids
from bearrec.data.dataset import DataError, RecDataset

PathLike = str | os.PathLike


SPLIT_MODES = ("time", "leave-one-out")  # 8:1:1 by target time | per user: last test, second-to-last valid


# ---------------------------------------------------------------------------------- raw pipeline
def build_from_interactions(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    items_path: Path,
    domain: str,
    strict: bool,
    min_interactions: int,
    history_len: int,
    source: dict,
    split: str = "time",
    keep_untitled: bool = False,
) -> RecDataset:
    """Clean the catalog, k-core filter, build sliding-window examples and split them 8:1:1 by time (or
    leave-one-out per user).

    ``interactions`` has columns user, item, timestamp, _line (file order); ``items`` item_id, title, _line.
    """
    log = FixLog()
    read = len(interactions)
    interactions, duplicates = _drop_duplicate_interactions(interactions, source["paths"][0])
    # Only reviewed items can reach a k-core catalog; cleaning the rest of a category-wide metadata
    # dump would only add noise to the counts and warnings.
    items = items[items["item_id"].isin(interactions["item"])]
    items, cleaning = clean_catalog(items, items_path, strict, log, keep_untitled)
    unique = len(interactions)
    interactions = interactions[interactions["item"].isin(items["item_id"])]
    without_title = unique - len(interactions)
    interactions = _k_core(interactions, min_interactions)
    if interactions.empty:
        log.flush()
        kept = f", {duplicates} of them exact duplicates" if duplicates else ""
        raise DataError(items_path if without_title == unique else source["paths"][0],
                        f"no interaction is left after cleaning and the {min_interactions}-core filter ({read} read"
                        f"{kept}, {unique - without_title} distinct ones with a titled item); lower --min-interactions "
                        "or add data")
    examples = _sliding_window(interactions, history_len)
    if split == "leave-one-out":
        splits = _leave_one_out(examples.drop(columns="timestamp"))
    else:
        # Integer cut points: 8:1:1 exactly when the count divides, never a float rounding surprise.
        examples = examples.iloc[np.argsort(examples["timestamp"].to_numpy(), kind="stable")].drop(columns="timestamp")
        n = len(examples)
        cuts = {"train": (0, n * 8 // 10), "valid": (n * 8 // 10, n * 9 // 10), "test": (n * 9 // 10, n)}
        splits = {name: examples.iloc[a:b].reset_index(drop=True) for name, (a, b) in cuts.items()}

    catalog = items[items["item_id"].isin(interactions["item"])]
    cleaning["titles_equal_to_other_ids"] = warn_titles_equal_to_ids(catalog, items_path, log)
    log.flush()
    catalog = catalog[["item_id", "title"]]
    source = {
        **source,
        "min_interactions": min_interactions,
        "history_len": history_len,
        "split": split,
        "interactions_read": read,
        "interactions_without_titled_item": without_title,
        "interactions_after_k_core": len(interactions),
        "users": int(interactions["user"].nunique()),
    }
    dataset = RecDataset(
        items=catalog,
        splits=splits,
        domain=domain,
        meta={"source": source, "cleaning": {**cleaning, "examples_dropped": 0, "history_entries_removed": 0,
                                             "duplicate_interactions_dropped": duplicates}},
    )
    dataset.validate(source=source["paths"][0])
    return dataset


def _drop_duplicate_interactions(interactions: pd.DataFrame, path: PathLike) -> tuple[pd.DataFrame, int]:
    """Drop rows whose (user, item, timestamp) an earlier row already has, keeping the first; one
    :class:`DataWarning` naming ``path``, the first dropped row and the count. The same user and item at
    another time (a repeat purchase) is not a duplicate. Returns the rows left and the count."""
    dup = interactions.duplicated(["user", "item", "timestamp"], keep="first")
    count = int(dup.sum())
    if count:
        first = interactions[dup].iloc[0]
        stamp = first["timestamp"]
        stamp = int(stamp) if float(stamp).is_integer() else stamp
        message = (f"{count} duplicate interaction(s) dropped, one of each kept (same user, item and timestamp as an "
                   f"earlier row; first: user {short(first['user'])}, item {short(first['item'])}, timestamp "
                   f"{stamp}); counted in duplicate_interactions_dropped")
        warnings.warn(str(DataError(path, message, row=int(first["_line"]))), DataWarning, stacklevel=4)
        interactions = interactions[~dup.to_numpy()]
    return interactions, count


def _k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep users and items with at least ``k`` interactions, repeating until nothing changes
    (dropping a user can push an item below ``k`` and vice versa)."""
    while len(interactions):
        user_counts = interactions.groupby("user")["item"].transform("size")
        item_counts = interactions.groupby("item")["user"].transform("size")
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            break
        interactions = interactions[keep]
    return interactions


def _leave_one_out(examples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per user (rows grouped by user, in time order): the last example test, the one before valid, the rest train.
    A user with one example gives a test row only, with two a valid and a test row."""
    from_end = examples.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()  # 0 = the user's last
    parts = {"train": from_end >= 2, "valid": from_end == 1, "test": from_end == 0}
    return {name: examples[keep].reset_index(drop=True) for name, keep in parts.items()}


def _sliding_window(interactions: pd.DataFrame, history_len: int) -> pd.DataFrame:
    """One example per position i >= 1 of each user's time-sorted sequence."""
    codes, _ = pd.factorize(interactions["user"])  # users in order of first appearance
    # np.lexsort is stable: interactions at the same time keep their file order.
    order = np.lexsort((interactions["timestamp"].to_numpy(), codes))
    codes = codes[order]
    users = interactions["user"].to_numpy()[order]
    items = interactions["item"].to_numpy()[order].tolist()
    times = interactions["timestamp"].to_numpy()[order]

    keep, histories, start = [], [], 0
    for i in range(len(items)):
        if i == 0 or codes[i] != codes[i - 1]:
            start = i  # first interaction of a user: history only, never a target
            continue
        keep.append(i)
        histories.append(items[max(start, i - history_len) : i])
    keep = np.array(keep, dtype=np.int64)
    return pd.DataFrame(
        {
            "user_id": users[keep].astype(str),
            "history": pd.Series(histories, dtype=object),
            "target": np.array(items, dtype=object)[keep].astype(str),
            "timestamp": times[keep],
        }
    )
