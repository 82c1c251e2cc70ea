"""How `list` and `show` print rows: rich tables that fit the terminal, or json, yaml, value.

Rows are the read side's JSON (dicts, lists, scalars). Tables hold scalars only: a nested
object is flattened into dotted keys (`insertion.provider`), a list of objects becomes a count
in a list and a small table of its own in `show`, never a JSON tree inside a cell.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from splice.cli.common import out, print_json

FORMATS = ("table", "json", "yaml", "value")

FormatOpt = Annotated[
    str,
    typer.Option("-o", "--output", help="table, json, yaml, or value (bare values, for scripts)."),
]
ColumnOpt = Annotated[
    list[str] | None,
    typer.Option("-c", "--column", help="Only this column (repeat); dotted for nested fields."),
]


def check_format(output: str) -> None:
    if output not in FORMATS:
        raise typer.BadParameter(
            f"{output!r} is not one of {', '.join(FORMATS)}", param_hint="'-o' / '--output'"
        )


def get(row: dict[str, Any], path: str) -> Any:
    """A dotted path into a row (`insertion.provider`); None where it is absent."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def scalar(value: Any) -> str:
    """One cell: a scalar as text, a list as its count (or its scalars), an object as k=v."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return ", ".join(scalar(v) for v in value)
        return f"{len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={scalar(v)}" for k, v in value.items() if not isinstance(v, dict | list))
    return str(value)


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys; lists stay lists (shown by `scalar` or as sub-tables)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def to_yaml(data: Any) -> str:
    """YAML of JSON-like data: PyYAML when installed, else a small emitter of the same."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dev dependency here
        return _yaml(data, 0).rstrip("\n") + "\n"
    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text


def _yaml(data: Any, indent: int) -> str:
    pad = " " * indent
    if isinstance(data, dict) and data:
        lines = []
        for k, v in data.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{json.dumps(str(k))}:\n{_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{json.dumps(str(k))}: {_yaml_scalar(v)}\n")
        return "".join(lines)
    if isinstance(data, list) and data:
        lines = []
        for v in data:
            body = _yaml(v, indent + 2) if isinstance(v, dict | list) and v else ""
            if body:
                lines.append(f"{pad}-\n{body}")
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}\n")
        return "".join(lines)
    return f"{pad}{_yaml_scalar(data)}\n"


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(v, ensure_ascii=False)  # JSON scalars are YAML scalars


def rows(items: list[dict[str, Any]], columns: list[str], output: str, title: str | None = None,
         data: Any = None, keep: bool = False) -> None:
    """A list: a table of `columns` (`keep`: all of them, however wide), or the items as
    json/yaml, or bare values (tab-separated)."""
    check_format(output)
    if output == "json":
        print_json(items if data is None else data)
    elif output == "yaml":
        sys.stdout.write(to_yaml(items if data is None else data))
    elif output == "value":
        for item in items:
            sys.stdout.write("\t".join(scalar(get(item, c)) for c in columns) + "\n")
    else:
        out.print(fitted(items, columns, title, keep))


HEADERS = {"provisioning_status": "provisioning", "operating_status": "operating",
           "insertion.provider": "provider", "insertion.router_id": "router_id",
           "protocol_port": "port", "segmentation_id": "vni", "lb_algorithm": "algorithm",
           "default_action": "default", "monitor_port_id": "monitor_port"}
KEY_COLUMNS = {"id", "name", "address", "vip_address", "ip_address", "cidr", "tenant",
               "provisioning_status", "operating_status", "pool_id", "pool_name", "type"}


def _table(items: list[dict[str, Any]], columns: list[str], title: str | None,
           wrap_all: bool = False) -> Table:
    shown = Table(title=title)
    for c in columns:
        shown.add_column(HEADERS.get(c, c), overflow="fold",
                         no_wrap=c.endswith("_status") and not wrap_all)
    for item in items:
        shown.add_row(*[Text(scalar(get(item, c))) for c in columns])  # text, not markup
    return shown


def _width(table: Table) -> int:
    return out.measure(table, options=out.options.update_width(100_000)).maximum


def fitted(items: list[dict[str, Any]], columns: list[str], title: str | None = None,
           keep: bool = False) -> Table:
    """A table as wide as the terminal allows: past it, empty columns go first, then the less
    telling ones (parents' ids, details) from the right; the rest fold within their cells."""
    shown = _table(items, columns, title)
    if keep or _width(shown) <= out.width:
        return shown
    empty = [c for c in columns if c not in ("id", "name")
             and not any(scalar(get(i, c)) for i in items)]
    droppable = empty + [c for c in reversed(columns) if c not in KEY_COLUMNS and c not in empty]
    while droppable and _width(shown) > out.width:
        gone = droppable.pop(0)
        columns = [c for c in columns if c != gone]
        shown = _table(items, columns, title)
    if _width(shown) > out.width:
        shown = _table(items, columns, title, wrap_all=True)
    return shown


def one(row: dict[str, Any], output: str, columns: list[str] | None = None,
        skip: tuple[str, ...] = ()) -> None:
    """One resource: field/value pairs (lists of objects as small tables after), or
    json/yaml, or bare values one per line."""
    check_format(output)
    if output in ("json", "yaml"):
        data = {c: get(row, c) for c in columns} if columns else row
        print_json(data) if output == "json" else sys.stdout.write(to_yaml(data))
        return
    flat = {k: v for k, v in flatten(row).items() if k.split(".")[0] not in skip}
    names = columns or list(flat)
    if output == "value":
        for c in names:
            sys.stdout.write(scalar(flat.get(c, get(row, c))) + "\n")
        return
    fields = Table(show_header=True)
    fields.add_column("field", style="bold", no_wrap=True)
    fields.add_column("value", overflow="fold")
    lists: list[tuple[str, list[dict[str, Any]]]] = []
    for c in names:
        value = flat.get(c, get(row, c))
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lists.append((c, value))
        fields.add_row(Text(c), Text(scalar(value)))  # a tenant's strings: text, not markup
    out.print(fields)
    for name, items in lists:
        flat_items = [flatten(i) for i in items]
        cols = [k for k in dict.fromkeys(k for i in flat_items for k in i)
                if any(not isinstance(i.get(k), dict | list) and i.get(k) not in (None, "")
                       for i in flat_items)]
        out.print(fitted(flat_items, cols, title=name))
