"""BigQuery Standard SQL to DuckDB SQL (sqlglot does the dialect; this module finds the tables a statement reads,
resolves `project.dataset.table`, `dataset.table` and, with a default dataset, `table`, and names result columns
the way BigQuery does: `f0_`, `f1_`, ... for expressions without an alias).

It is also the first wall of the query sandbox (see docs/security.md): a statement is one of the kinds on an
allow-list, reads tables and UNNEST only (no table functions), calls only functions the engine's catalogue offers
minus the ones that reach outside the tables, and builds arrays of at most MAX_ARRAY_ELEMENTS. The second wall is
the engine itself, whose file, network and extension access is switched off (`embedded.CONFIG`), and the third a
check of the engine's own parse of what is run (`query.check_engine_parse`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError

from dicomlake.errors import InvalidArgument


class InvalidQuery(InvalidArgument):
    reason = "invalidQuery"


@dataclass(frozen=True)
class TableName:
    project: str
    dataset: str
    table: str

    def __str__(self) -> str:
        return f"{self.project}:{self.dataset}.{self.table}"


@dataclass(frozen=True)
class Statement:
    """One parsed statement: the tables it reads or writes, and whether it returns rows."""

    tree: exp.Expression
    tables: tuple[TableName, ...]
    statement_type: str
    # The table a statement creates, changes or drops.
    target: TableName | None = None

    @property
    def returns_rows(self) -> bool:
        return isinstance(self.tree, exp.Query)

    def to_duckdb(self, catalog_of: Callable[[str], str | None]) -> str:
        """DuckDB SQL with every table as `"catalog"."dataset"."table"`, the catalog being the DuckDB database
        that holds the table's project (None: left out, for views that must resolve inside their own file)."""
        tree = self.tree.copy()
        for node in _table_nodes(tree):
            name: TableName = node.meta["dicomlake_table"]
            catalog = catalog_of(name.project)
            node.set("catalog", exp.to_identifier(catalog, quoted=True) if catalog is not None else None)
            node.set("db", exp.to_identifier(name.dataset, quoted=True))
            node.set("this", exp.to_identifier(name.table, quoted=True))
        tree = _bounded_arrays(tree)
        try:
            return tree.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)
        except SqlglotError as exc:
            raise InvalidQuery(f"Unsupported in this query engine: {_first_line(exc)}") from None


_STATEMENT_TYPES = {
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
    exp.Merge: "MERGE",
    exp.TruncateTable: "TRUNCATE_TABLE",
    exp.Drop: "DROP_TABLE",
    exp.Alter: "ALTER_TABLE",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TOKEN = re.compile(
    r"<Token token_type: TokenType\.(\w+), text: (.*?), line: \d+, col: \d+, start: \d+, end: \d+, comments: .*?>"
)


# The longest statement and the deepest nesting a query may have: the parser recurses per level.
MAX_QUERY_CHARS = 1_000_000
MAX_NESTING = 200
# GENERATE_ARRAY and its date and timestamp kin build the whole array in memory, outside the engine's memory limit.
MAX_ARRAY_ELEMENTS = 1_000_000
_STATEMENTS = (
    exp.Query,
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.TruncateTable,
    exp.Create,
    exp.Drop,
    exp.Alter,
)
_OBJECT_KINDS = {"TABLE", "VIEW", "SCHEMA"}
# Functions of the engine a query may not call although the catalogue has them: what reads settings, variables or
# the text of the running query, what only waits, and the raw series builders (GENERATE_ARRAY is bounded instead).
DENIED_FUNCTIONS = frozenset(
    {
        "current_setting",
        "getvariable",
        "current_query",
        "current_query_id",
        "sleep_ms",
        "pg_sleep",
        "range",
        "generate_series",
        "json_serialize_sql",
        "json_deserialize_sql",
        "json_serialize_plan",
        "in_search_path",
        "current_schemas",
        "current_database",
        "current_catalog",
        "sql_auto_complete",
    }
)


def parse(sql: str, project: str, default_dataset: tuple[str, str] | None = None) -> Statement:
    """Parse one BigQuery Standard SQL statement issued in `project`; `default_dataset` (project, dataset)
    qualifies bare table names."""
    if len(sql) > MAX_QUERY_CHARS:
        raise InvalidQuery(f"The query is too large: {len(sql):,} characters, at most {MAX_QUERY_CHARS:,}")
    depth = _nesting(sql)
    if depth > MAX_NESTING:
        raise InvalidQuery(f"The query nests parentheses or brackets {depth} levels deep, at most {MAX_NESTING}")
    try:
        trees = [t for t in sqlglot.parse(sql, read="bigquery") if isinstance(t, exp.Expression)]
    except ParseError as exc:
        raise InvalidQuery(_syntax_error(exc)) from None
    except SqlglotError as exc:
        raise InvalidQuery(f"Syntax error: {_first_line(exc)}") from None
    except RecursionError:
        raise InvalidQuery("The query nests too deeply to be parsed") from None
    if not trees:
        raise InvalidQuery("Syntax error: the query is empty")
    if len(trees) > 1:
        raise InvalidQuery("Multi-statement queries (scripts) are not supported here: send one statement")
    tree = trees[0]
    _check_sandbox(tree, sql)
    tables = []
    for node in _table_nodes(tree):
        name = _resolve(node, project, default_dataset)
        node.meta["dicomlake_table"] = name
        tables.append(name)
    _name_anonymous_columns(tree)
    return Statement(tree, tuple(dict.fromkeys(tables)), _statement_type(tree), _target(tree))


def _nesting(sql: str) -> int:
    """The deepest nesting of ( and [ in `sql`, quoted text included (an upper bound is enough)."""
    depth = deepest = 0
    for char in sql:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth = max(0, depth - 1)
    return deepest


def _check_sandbox(tree: exp.Expression, sql: str) -> None:
    """Refuse what reaches beyond the project's tables: statement kinds off the allow-list, table functions,
    functions the engine must not run."""
    if not isinstance(tree, _STATEMENTS):
        kind = re.sub(r"[^A-Za-z_].*", "", sql.split(None, 1)[0]).upper() or tree.key.upper()
        raise InvalidQuery(f"{kind} statements are not supported: a query reads, changes, creates or drops tables")
    if isinstance(tree, exp.Create | exp.Drop | exp.Alter):
        kind = str(tree.args.get("kind") or "TABLE").upper()
        if kind not in _OBJECT_KINDS:
            raise InvalidQuery(f"{tree.key.upper()} {kind} is not supported: only tables, views and datasets")
    for table in tree.find_all(exp.Table):
        if table.this is not None and not isinstance(table.this, exp.Identifier):
            this = table.this
            if not isinstance(this, exp.Func):
                raise InvalidQuery(f"Invalid table name: {table.sql()[:200]}")
            name = this.name if isinstance(this, exp.Anonymous) else this.sql_name()
            raise InvalidQuery(f"Table-valued function not found: {name}. A query reads tables and UNNEST only")
    allowed = engine_functions()
    for call in tree.find_all(exp.Anonymous):
        name = str(call.this).casefold()
        if name in DENIED_FUNCTIONS or name not in allowed:
            raise InvalidQuery(f"Function not found: {call.this}")
    for function in tree.find_all(exp.Func):
        if type(function).__name__.startswith(("Read", "Glob")):
            raise InvalidQuery(f"Function not found: {function.sql_name()}")


_catalogue: frozenset[str] | None = None


def engine_functions() -> frozenset[str]:
    """The scalar, aggregate, window and macro functions of the engine's own catalogue (lower case)."""
    global _catalogue
    if _catalogue is None:
        import duckdb

        with duckdb.connect(config={"enable_external_access": False, "autoload_known_extensions": False}) as conn:
            rows = conn.execute(
                "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
                "WHERE function_type IN ('scalar', 'aggregate', 'window', 'macro')"
            ).fetchall()
        _catalogue = frozenset(name for (name,) in rows)
    return _catalogue


def _bounded_arrays(tree: exp.Expression) -> exp.Expression:
    """GENERATE_ARRAY, GENERATE_DATE_ARRAY and GENERATE_TIMESTAMP_ARRAY fail, rather than build, an array of more
    than MAX_ARRAY_ELEMENTS."""

    def guard(node: exp.Expression) -> exp.Expression:
        if not isinstance(node, exp.GenerateSeries | exp.GenerateDateArray | exp.GenerateTimestampArray):
            return node
        start, end, step = (node.args.get(k) for k in ("start", "end", "step"))
        if start is None or end is None:
            return node
        if isinstance(node, exp.GenerateSeries):
            step = step or exp.Literal.number(1)
            count = f"abs(({end.sql('duckdb')}) - ({start.sql('duckdb')})) / abs({step.sql('duckdb')})"
        else:
            step = step or sqlglot.parse_one("INTERVAL 1 DAY", read="duckdb")
            count = (
                f"abs(epoch(CAST(({end.sql('duckdb')}) AS TIMESTAMP)) - epoch(CAST(({start.sql('duckdb')}) "
                f"AS TIMESTAMP))) / abs(epoch({step.sql('duckdb')}))"
            )
        name = {"GENERATE_SERIES": "GENERATE_ARRAY"}.get(node.sql_name(), node.sql_name())
        message = f"{name}: the array would have more than {MAX_ARRAY_ELEMENTS:,} elements"
        check = sqlglot.parse_one(f"({count}) > {MAX_ARRAY_ELEMENTS}", read="duckdb")
        failure = exp.Anonymous(this="error", expressions=[exp.Literal.string(message)])
        # The guard wraps the step, not the call: the engine folds constant calls while it plans, whichever branch
        # of a CASE they are in. (The step, being typed, keeps its type; a bare string as the end would not.)
        node.set("step", exp.If(this=check, true=failure, false=step.copy()))
        return node

    return tree.transform(guard, copy=False)


def _table_nodes(tree: exp.Expression) -> list[exp.Table]:
    """The nodes that name stored tables: not CTEs, not table functions, not UNNEST."""
    ctes = {cte.alias_or_name.casefold() for cte in tree.find_all(exp.CTE)}
    nodes = []
    for node in tree.find_all(exp.Table):
        if not isinstance(node.this, exp.Identifier):
            continue
        if not node.args.get("db") and node.name.casefold() in ctes:
            continue
        nodes.append(node)
    return nodes


def _resolve(node: exp.Table, project: str, default_dataset: tuple[str, str] | None) -> TableName:
    parts = [p.name for p in node.parts]
    # `project.dataset.table` in one pair of backticks arrives as one identifier when sqlglot cannot split it.
    if len(parts) == 1 and "." in parts[0]:
        parts = parts[0].split(".")
    if len(parts) == 3:
        return TableName(*parts)
    if len(parts) == 2:
        return TableName(project, parts[0], parts[1])
    if len(parts) == 1 and default_dataset:
        return TableName(*default_dataset, parts[0])
    if len(parts) == 1:
        raise InvalidQuery(f'Table "{parts[0]}" must be qualified with a dataset (e.g. dataset.table).')
    raise InvalidQuery(f"Invalid table name {'.'.join(parts)}: use project.dataset.table")


def _target(tree: exp.Expression) -> TableName | None:
    if isinstance(tree, exp.Query):
        return None
    node = tree.this if isinstance(tree.this, exp.Expression) else None
    if isinstance(tree, exp.TruncateTable):
        if len(tree.expressions) != 1:
            raise InvalidQuery("TRUNCATE TABLE takes one table")
        node = tree.expressions[0]
    if isinstance(tree, exp.Drop) and tree.args.get("tables"):
        node = tree.args["tables"][0]
    if isinstance(node, exp.Schema):
        node = node.this
    return node.meta.get("dicomlake_table") if isinstance(node, exp.Table) else None


def _name_anonymous_columns(tree: exp.Expression) -> None:
    """BigQuery names a result column after its alias, column or struct field, else `f<n>_` counting the
    anonymous ones; DuckDB would name it after the expression text."""
    select: object = tree  # sqlglot types the children of a node as its base class, narrowed below
    while isinstance(select, exp.SetOperation):
        select = select.this  # the first query of a UNION: it names the columns
    if isinstance(select, exp.Subquery):
        select = select.unnest()
    if not isinstance(select, exp.Select):
        return
    anonymous = 0
    for column in list(select.expressions):
        if isinstance(column, exp.Alias | exp.Column | exp.Dot | exp.Star):
            continue
        column.replace(exp.alias_(column.copy(), f"f{anonymous}_", quoted=True))
        anonymous += 1


def _statement_type(tree: exp.Expression) -> str:
    if isinstance(tree, exp.Query):
        return "SELECT"
    if isinstance(tree, exp.Create):
        kind = str(tree.args.get("kind") or "TABLE").upper()
        if kind in ("SCHEMA", "VIEW"):
            return f"CREATE_{kind}"
        return "CREATE_TABLE_AS_SELECT" if tree.expression is not None else "CREATE_TABLE"
    for statement, name in _STATEMENT_TYPES.items():
        if isinstance(tree, statement):
            return name
    return "SCRIPT"


def _syntax_error(exc: ParseError) -> str:
    """`Syntax error: Expected table name but got WHERE at [1:13]`, as BigQuery words it."""
    if not exc.errors:
        return f"Syntax error: {_first_line(exc)}"
    error = exc.errors[0]
    description = _TOKEN.sub(lambda m: "end of input" if m.group(1) == "SENTINEL" else m.group(2), error["description"])
    # sqlglot points at the end of the offending token, BigQuery at its start (or just past the end of the text).
    column = int(error.get("col") or 0) + 1
    if "TokenType.SENTINEL" not in error["description"]:
        column -= len(error.get("highlight") or "")
    return f"Syntax error: {description} at [{error.get('line', 1)}:{column}]"


def _first_line(exc: Exception) -> str:
    return _ANSI.sub("", str(exc)).strip().splitlines()[0]
