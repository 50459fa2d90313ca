"""Item files of the delimited formats as a pandas frame ``item_id, title, _line`` (a catalog fits in memory):
``items.csv`` (``item,title`` or ``item_id,title``), MovieLens ``movies.dat`` (``MovieID::Title::Genres``, latin-1)
or ``movies.csv`` (``movieId,title,genres``), RecBole ``.item`` (``item_id:token`` and ``title:token_seq`` or
``movie_title:token_seq``), and any of them as parquet. Titles are kept as given (MovieLens keeps the year)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from bearrec.data.cleaning import refuse_duplicate_ids
from bearrec.data.parsing import _ID_ALIASES, read_csv
from bearrec.data.streams import load_parquet, sql_ident
from bearrec.data.tables import _recbole_name, read_plain, require_columns

# format -> (other names of the id column, of the title column)
ALIASES = {
    "interactions": ({"item_id": "item"}, {}),
    "movielens": ({"movieId": "item", "MovieID": "item"}, {}),
    "recbole": ({"item_id": "item"}, {"movie_title": "title"}),
}


def read_items(con: duckdb.DuckDBPyConnection, fmt: str, path: Path) -> pd.DataFrame:
    """The items of ``path`` in file order; refuses empty and repeated ids (file, row, field)."""
    id_aliases, title_aliases = ALIASES[fmt]
    if path.suffix == ".parquet":
        types = load_parquet(con, path, "items_parquet")
        source = {name: name for name in types}  # the format's name -> the file's column
        source.update({c: a for a, c in {**id_aliases, **title_aliases}.items() if a in types and c not in types})
        require_columns(source, ("item", "title"), path, f"columns: {','.join(types)}")
        frame = con.execute(f"""SELECT {sql_ident(source["item"])} AS item, {sql_ident(source["title"])} AS title,
            rowid + 1 AS _line FROM items_parquet ORDER BY rowid""").df()
        con.execute("DROP TABLE items_parquet")
        for column in ("item", "title"):
            frame[column] = frame[column].map(lambda v: "" if pd.isna(v) else str(v)).astype(object)
    elif fmt == "movielens" and path.suffix != ".csv" and not path.name.endswith(".csv.gz"):
        frame = read_plain(path, ("item", "title", "genres"), "::", "latin-1")
    elif fmt == "recbole":
        frame = read_plain(path, None, "\t", "utf-8")
        frame = frame.rename(columns={c: _recbole_name(c) for c in frame.columns})
        frame = _renamed(frame, {**id_aliases, **title_aliases})
        header = ",".join(c for c in frame.columns if c != "_line")
        require_columns(frame.columns, ("item", "title"), path, f"header: {header}", row=1)
    else:
        aliases = _ID_ALIASES if fmt == "interactions" else {**id_aliases, **title_aliases}
        frame = read_csv(path, ("item", "title"), aliases)
    frame = frame.rename(columns={"item": "item_id"})
    refuse_duplicate_ids(frame, "item", path)
    return frame[["item_id", "title", "_line"]].reset_index(drop=True)


def register_ids(con: duckdb.DuckDBPyConnection, items: pd.DataFrame) -> None:
    """Table ``catalog_ids(item_id)``: the ids interactions may name."""
    con.register("catalog_frame", items[["item_id"]].astype({"item_id": str}))
    con.execute("CREATE TABLE catalog_ids AS SELECT item_id FROM catalog_frame")
    con.unregister("catalog_frame")


def _renamed(frame: pd.DataFrame, aliases: dict[str, str]) -> pd.DataFrame:
    return frame.rename(columns={a: c for a, c in aliases.items() if a in frame.columns and c not in frame.columns})
