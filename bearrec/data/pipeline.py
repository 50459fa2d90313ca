"""From interactions to examples, in SQL: exact duplicates dropped, the catalog cleaned, the iterative k-core, sliding
windows of history, and the split (8:1:1 by target time, or leave-one-out per user).

The input is the table ``raw(user VARCHAR, item VARCHAR, ts DOUBLE, line BIGINT)`` in a scratch duckdb database
(:mod:`bearrec.data.engine`), one row per interaction, ``line`` its row in the file (unique, in file order), and
the items of the format as a pandas frame (``item_id, title, _line``: a catalog fits in memory, the interactions
need not). Every step is a set operation or a window function, so that duckdb streams and spills it:

* duplicates: ``GROUP BY user, item, ts`` keeping the first line (one warning with the count and the first row
  dropped);
* the k-core: users and items with at least k interactions, counted on the same table, repeated until the
  count of rows stops changing (dropping a user can push an item below k and vice versa);
* windows: each user's interactions ordered by (time, line), the history the ``lag`` of up to ``history_len``
  previous items (a framed ``list`` window beyond 64), every position but the first a target;
* the split: ``ORDER BY`` target time, then the user's first line, then the line (examples with equal times
  keep the order of users' first appearance), cut at n*8//10 and n*9//10; or, per user, the last example test,
  the one before it valid, the rest train.

The result, :class:`Prepared`, is either written as parquet straight from duckdb (``write``, what ``bearrec
prepare`` does: the splits never enter Python) or loaded as a :class:`RecDataset` (``to_dataset``). The wide rows
(histories) are sorted once, as each split is written; the order is decided on narrow columns.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from bearrec.checks import short
from bearrec.data.cleaning import DataWarning, FixLog, clean_catalog, warn_titles_equal_to_ids
from bearrec.data.config import PrepareConfig
from bearrec.data.dataset import FILES, SPLITS, DataError, RecDataset, _file_digest
from bearrec.data.engine import Steps, table_rows
from bearrec.data.streams import sql_string
from bearrec.io import atomic_folder

MAX_LAGS = 64  # histories up to this length are built from lag(); longer ones from a framed list() window


@dataclass(frozen=True)
class Splits:
    """Each split's rows (``user_id, history, target``, in order) as a query over the table ``windows``, and their
    counts."""

    sql: dict[str, str]
    counts: dict[str, int]


@dataclass
class Prepared:
    """The examples of a prepared dataset, still in duckdb (:class:`Splits`), with the catalog and meta."""

    con: duckdb.DuckDBPyConnection
    catalog: pd.DataFrame  # item_id, title: the catalog in order
    domain: str
    meta: dict
    splits: Splits

    def _split_sql(self, name: str) -> str:
        return self.splits.sql[name]

    def summary(self) -> dict:
        return {"items": len(self.catalog), **{f"{name}_examples": self.splits.counts[name] for name in SPLITS}}

    def to_dataset(self) -> RecDataset:
        """The whole dataset in memory (the splits as pandas frames, histories as lists)."""
        splits = {}
        for name in SPLITS:
            frame = self.con.execute(self._split_sql(name)).df()
            splits[name] = frame.assign(history=frame["history"].map(list))
        dataset = RecDataset(items=self.catalog, splits=splits, domain=self.domain, meta=self.meta)
        dataset.validate(source=self.meta["source"]["paths"][0])
        return dataset

    def write(self, folder: str | Path, steps: Steps | None = None) -> dict:
        """Write the dataset folder (the layout of :meth:`RecDataset.save`) atomically, the splits straight from
        duckdb; returns the summary. Every item of a split is in the catalog by construction."""
        steps = steps or Steps()
        summary = self.summary()
        with atomic_folder(folder, "dataset") as tmp:
            self.catalog.to_parquet(tmp / "items.parquet", index=False)
            for name in SPLITS:
                with steps.step(f"writing {name}.parquet", self.con):
                    path = sql_string(tmp / f"{name}.parquet")
                    self.con.execute(f"COPY ({self._split_sql(name)}) TO {path} (FORMAT parquet)")
            meta = {"domain": self.domain, **self.meta, "summary": summary}
            (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, default=str))
            for name in FILES:  # every file readable before the swap
                _file_digest(tmp / name)
        return summary


def build(con: duckdb.DuckDBPyConnection, items: pd.DataFrame, items_path: Path, config: PrepareConfig,
          source: dict, steps: Steps | None = None) -> Prepared:
    """Clean the catalog, deduplicate, k-core filter, build the windows and split them (module docstring).
    ``config`` is validated; ``source`` holds the format and the paths for ``meta["source"]``."""
    steps = steps or Steps()
    log = FixLog()
    read = table_rows(con, "raw")
    with steps.step("dropping duplicate interactions", con):
        duplicates = _deduplicated(con, source["paths"][0])

    # Only reviewed items can reach a k-core catalog; cleaning the rest of a category-wide metadata dump would
    # only add noise to the counts and warnings.
    con.register("items_frame", items[["item_id"]])
    reviewed = con.execute("SELECT list(item_id) FROM items_frame WHERE item_id IN (SELECT item FROM item_codes)"
                           ).fetchall()[0][0]
    con.unregister("items_frame")
    items = items[items["item_id"].isin(set(reviewed or ()))]
    items, cleaning = clean_catalog(items, items_path, config.strict, log, config.keep_untitled)
    con.register("titled_frame", pd.DataFrame({"item": items["item_id"].astype(str)}))
    con.execute("CREATE TABLE titled AS SELECT i FROM item_codes WHERE item IN (SELECT item FROM titled_frame)")
    con.unregister("titled_frame")

    unique = read - duplicates
    with steps.step(f"{config.min_interactions}-core filter", con):
        con.execute("CREATE TABLE core AS SELECT u, i, ts, line FROM inter WHERE i IN (SELECT i FROM titled)")
        con.execute("DROP TABLE inter")
        without_title = unique - table_rows(con, "core")
        _k_core(con, config.min_interactions)
    kept = table_rows(con, "core")
    if kept == 0:
        log.flush()
        also = f", {duplicates} of them exact duplicates" if duplicates else ""
        raise DataError(items_path if without_title == unique else source["paths"][0],
                        f"no interaction is left after cleaning and the {config.min_interactions}-core filter ({read} "
                        f"read{also}, {unique - without_title} distinct ones with a titled item); lower "
                        "--min-interactions or add data")
    in_core = {row[0] for row in con.execute(
        "SELECT item FROM item_codes WHERE i IN (SELECT DISTINCT i FROM core)").fetchall()}
    catalog = items[items["item_id"].isin(in_core)]
    cleaning["titles_equal_to_other_ids"] = warn_titles_equal_to_ids(catalog, items_path, log)
    log.flush()
    users = int(con.execute("SELECT count(DISTINCT u) FROM core").fetchall()[0][0])
    with steps.step("sliding windows and split", con):
        splits = _examples(con, config.history_len, config.split)
    source = {
        **source,
        "min_interactions": config.min_interactions,
        "history_len": config.history_len,
        "split": config.split,
        "interactions_read": read,
        "interactions_without_titled_item": without_title,
        "interactions_after_k_core": kept,
        "users": users,
    }
    meta = {"source": source, "cleaning": {**cleaning, "examples_dropped": 0, "history_entries_removed": 0,
                                           "duplicate_interactions_dropped": duplicates}}
    prepared = Prepared(con, catalog[["item_id", "title"]].reset_index(drop=True), config.domain, meta, splits)
    if prepared.summary()["train_examples"] == 0:
        raise DataError(source["paths"][0], "no training examples: the train split is empty")
    return prepared


def _deduplicated(con: duckdb.DuckDBPyConnection, path: str) -> int:
    """Table ``inter(u, i, ts, line, copies)``: ``raw`` with users and items as integer codes (tables ``user_codes``,
    ``item_codes``; i = 1.. in any order: every later group, join and window runs on integers, and the ids come
    back as text only in the output), one row per (user, item, time) with its first line. Warns of the exact
    duplicates dropped, returns their count and drops ``raw`` (its scratch space is reused)."""
    con.execute("CREATE TABLE user_codes AS SELECT user, (row_number() OVER ())::INTEGER AS u "
                "FROM (SELECT DISTINCT user FROM raw)")
    con.execute("CREATE TABLE item_codes AS SELECT item, (row_number() OVER ())::INTEGER AS i "
                "FROM (SELECT DISTINCT item FROM raw)")
    con.execute("CREATE TABLE inter AS SELECT u, i, ts, min(line) AS line, count(*) AS copies "
                "FROM raw JOIN user_codes USING (user) JOIN item_codes USING (item) GROUP BY u, i, ts")
    duplicates = table_rows(con, "raw") - table_rows(con, "inter")
    if duplicates:
        _warn_duplicates(con, duplicates, path)
    con.execute("DROP TABLE raw")
    return duplicates


def _warn_duplicates(con: duckdb.DuckDBPyConnection, count: int, path: str) -> None:
    """One warning: the count and the first dropped row (the second line of a repeated interaction)."""
    user, item, ts, line = con.execute(
        "SELECT user, item, ts, line FROM (SELECT r.*, row_number() OVER (PARTITION BY r.user, r.item, r.ts "
        "ORDER BY r.line) AS k FROM raw r SEMI JOIN (SELECT user, item, ts FROM inter JOIN user_codes USING (u) "
        "JOIN item_codes USING (i) WHERE copies > 1) d ON r.user = d.user AND r.item = d.item AND r.ts = d.ts) "
        "WHERE k = 2 ORDER BY line LIMIT 1").fetchall()[0]
    stamp = int(ts) if float(ts).is_integer() else ts
    message = (f"{count} duplicate interaction(s) dropped, one of each kept (same user, item and timestamp as an "
               f"earlier row; first: user {short(user)}, item {short(item)}, timestamp {stamp}); counted in "
               "duplicate_interactions_dropped")
    warnings.warn(str(DataError(path, message, row=int(line))), DataWarning, stacklevel=5)


def _k_core(con: duckdb.DuckDBPyConnection, k: int) -> None:
    """Keep users and items with at least ``k`` interactions in ``core``, until nothing changes. Each round counts
    the rows of ``core`` whose user and item are still kept (narrow tables of codes); ``core`` itself is rewritten
    once, at the end (half the work of rewriting it every round, measured at 10^7)."""
    con.execute("CREATE TABLE kept_users AS SELECT DISTINCT u FROM core")
    con.execute("CREATE TABLE kept_items AS SELECT DISTINCT i FROM core")
    rows = None
    while True:
        con.execute("CREATE OR REPLACE TABLE kept AS SELECT u, i FROM core "
                    "WHERE u IN (SELECT u FROM kept_users) AND i IN (SELECT i FROM kept_items)")
        now = table_rows(con, "kept")
        if now == rows:  # the kept users and items select the rows that chose them: each has k of them
            break
        rows = now
        for column, table in (("u", "kept_users"), ("i", "kept_items")):
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {column} FROM kept GROUP BY {column} "
                        f"HAVING count(*) >= {k}")
    con.execute("CREATE OR REPLACE TABLE core AS SELECT * FROM core "
                "WHERE u IN (SELECT u FROM kept_users) AND i IN (SELECT i FROM kept_items)")
    con.execute("DROP TABLE kept; DROP TABLE kept_users; DROP TABLE kept_items")


def _examples(con: duckdb.DuckDBPyConnection, history_len: int, split: str) -> Splits:
    """Table ``windows``: one row per position >= 2 of each user's sequence (the user's code, ``history, target``,
    and what orders and splits them); returns each split's query (``user_id, history, target``). The wide rows (histories) are sorted once, as each split is
    written: the time split's global order is a narrow table ``ranks(line, k)``, leave-one-out's the user's first
    line and the position."""
    if history_len <= MAX_LAGS:
        lags = ", ".join(f"lag(c.item, {k}) OVER w" for k in range(history_len, 0, -1))
        history = f"list_filter([{lags}], lambda x: x IS NOT NULL)"
    else:
        history = (f"list(c.item) OVER (PARTITION BY c.u ORDER BY c.ts, c.line ROWS BETWEEN {history_len} "
                   "PRECEDING AND 1 PRECEDING)")
    # Users stay codes here: their text, a hash table as large as the user base, is joined as each split is written
    # (with it inside the window, 10^8 interactions ran out of a 1 GB memory limit).
    con.execute(f"""CREATE TABLE windows AS
        SELECT c.u, {history} AS history, c.item AS target, c.ts, c.line, min(c.line) OVER (PARTITION BY c.u)
               AS first_line, count(*) OVER (PARTITION BY c.u) AS n, row_number() OVER w AS pos
        FROM (core JOIN item_codes USING (i)) c
        WINDOW w AS (PARTITION BY c.u ORDER BY c.ts, c.line)
        QUALIFY pos >= 2""")
    con.execute("DROP TABLE core; DROP TABLE item_codes")  # windows has what they held
    columns = "SELECT user_codes.user AS user_id, history, target FROM windows JOIN user_codes USING (u)"
    if split == "leave-one-out":  # per user: the last example test, the one before valid, the rest train
        where = {"train": "n - pos >= 2", "valid": "n - pos = 1", "test": "n - pos = 0"}
        counts = con.execute(f"SELECT {', '.join(f'count(*) FILTER (WHERE {w})' for w in where.values())} "
                             "FROM windows").fetchall()[0]
        return Splits({name: f"{columns} WHERE {w} ORDER BY first_line, pos" for name, w in where.items()},
                      dict(zip(where, map(int, counts))))
    n = table_rows(con, "windows")
    con.execute("CREATE TABLE ranks AS SELECT line, row_number() OVER (ORDER BY ts, first_line, line) - 1 AS k "
                "FROM windows")
    cuts = {"train": (0, n * 8 // 10), "valid": (n * 8 // 10, n * 9 // 10), "test": (n * 9 // 10, n)}
    return Splits({name: f"{columns} JOIN ranks USING (line) WHERE k >= {lo} AND k < {hi} ORDER BY k"
                   for name, (lo, hi) in cuts.items()}, {name: hi - lo for name, (lo, hi) in cuts.items()})
