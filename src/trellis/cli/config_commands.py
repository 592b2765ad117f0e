"""`trellis apply`, `get`, `delete` and `analyze`: mesh config with kubectl's habits.

Only click is imported at module level; pydantic (the config models), httpx and
rich are imported when a command runs, so `trellis proxy` stays lean.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from trellis.cli.options import api_client, fail, server_options

if TYPE_CHECKING:
    from trellis.cli.client import ApiError
    from trellis.controlplane.api_kinds import KindInfo

DEFAULT_NAMESPACE = "default"
_SUFFIXES = (".yaml", ".yml", ".json")

_FILENAME_HELP = "A file, a directory of .yaml/.yml/.json files, or - for stdin (repeatable)."


def _load(filenames: Sequence[str]) -> list[dict[str, Any]]:
    """Validated documents from files (every problem printed; exit 1 if any)."""
    from trellis.api.loader import load_paths  # noqa: PLC0415
    from trellis.api.problem import ResourceError  # noqa: PLC0415

    try:
        resources = load_paths(list(filenames), stdin=sys.stdin)
    except ResourceError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None
    return [resource.to_document() for resource in resources]


def _print_rejection(error: ApiError) -> None:
    causes = error.details.get("causes") or []
    findings = error.details.get("findings") or []
    if not causes and not findings:
        fail(error)
    first_line = error.message.splitlines()[0] if error.message else ""
    click.echo(f"Error from server ({error.reason or error.code}): {first_line}", err=True)
    for cause in causes:
        click.echo(f"error: {cause.get('text') or cause.get('message')}", err=True)
    for finding in findings:
        click.echo(f"  {finding.get('text')}", err=True)
    raise SystemExit(1)


@click.command()
@click.option("-f", "--filename", "filenames", multiple=True, required=True, help=_FILENAME_HELP)
@click.option(
    "--dry-run",
    type=click.Choice(["none", "server"]),
    default="none",
    show_default=True,
    help="server: validate, analyze and plan on the server, store nothing.",
)
@click.option("--force", is_flag=True, help="Store even if analysis finds errors.")
@server_options
def apply(
    filenames: tuple[str, ...], dry_run: str, force: bool, server: str, token: str | None
) -> None:
    """Create or update mesh config from YAML or JSON files (all or nothing)."""
    from trellis.cli.client import ApiError  # noqa: PLC0415

    documents = _load(filenames)
    if not documents:
        click.echo("error: no objects passed to apply", err=True)
        raise SystemExit(1)
    with api_client(server, token) as client:
        try:
            answer = client.apply(documents, force=force, dry_run=dry_run == "server")
        except ApiError as exc:
            _print_rejection(exc)
    suffix = " (server dry run)" if answer.get("dryRun") else ""
    for result in answer.get("results", []):
        click.echo(f"{result['qualifiedName']} {result['outcome']}{suffix}")
    for warning in answer.get("warnings", []):
        click.echo(f"Warning: {warning.get('text')}", err=True)


def _targets(kind_arg: str, names: Sequence[str]) -> list[tuple[KindInfo, str | None]]:
    """(kind, name) pairs from `vs`, `vs,dr`, `vs NAME...` or `vs/NAME dr/NAME` forms."""
    from trellis.controlplane.api_kinds import UnknownKindError, resolve_kind  # noqa: PLC0415

    try:
        if "/" in kind_arg:
            pairs: list[tuple[KindInfo, str | None]] = []
            for item in (kind_arg, *names):
                kind, sep, name = item.partition("/")
                if not sep or not name:
                    raise click.UsageError(f"expected KIND/NAME, got {item!r}")
                pairs.append((resolve_kind(kind), name))
            return pairs
        kinds = [resolve_kind(kind) for kind in kind_arg.split(",") if kind]
    except UnknownKindError as exc:
        raise click.UsageError(str(exc)) from None
    if names and len(kinds) > 1:
        raise click.UsageError("give one kind when naming resources, or use KIND/NAME")
    if not names:
        return [(kind, None) for kind in kinds]
    return [(kinds[0], name) for name in names]


def _print_documents(documents: list[dict[str, Any]], output: str, single: bool) -> None:
    import yaml  # noqa: PLC0415

    value: Any = (
        documents[0]
        if single and len(documents) == 1
        else {
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": ""},
            "items": documents,
        }
    )
    if output == "json":
        click.echo(json.dumps(value, indent=2))
    else:
        click.echo(yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip())


@click.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option("-n", "--namespace", default=None, help=f"Namespace [default: {DEFAULT_NAMESPACE}].")
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["wide", "yaml", "json", "name"]),
    default=None,
    help="Output format (a table by default).",
)
@server_options
def get(
    kind: str,
    names: tuple[str, ...],
    namespace: str | None,
    all_namespaces: bool,
    output: str | None,
    server: str,
    token: str | None,
) -> None:
    """Show mesh config: KIND is vs, dr, se, we, pa, ap (or their full names and plurals)."""
    from trellis.cli.client import ApiError  # noqa: PLC0415
    from trellis.cli.render import resource_table  # noqa: PLC0415

    targets = _targets(kind, names)
    named = any(name is not None for _, name in targets)
    if all_namespaces and named:
        raise click.UsageError("a resource cannot be retrieved by name across all namespaces")
    scope = None if all_namespaces else (namespace or DEFAULT_NAMESPACE)
    failed = False
    groups: list[tuple[KindInfo, list[dict[str, Any]]]] = []
    with api_client(server, token) as client:
        for info, name in targets:
            try:
                if name is None:
                    found = client.list_resources(info, scope)
                else:
                    found = [client.get(info, scope or DEFAULT_NAMESPACE, name)]
            except ApiError as exc:
                if exc.code != 404 or name is None:
                    fail(exc)
                click.echo(f"Error from server (NotFound): {exc.message}", err=True)
                failed = True
                continue
            if groups and groups[-1][0] == info:
                groups[-1][1].extend(found)
            else:
                groups.append((info, found))
    documents = [document for _, found in groups for document in found]
    if not documents and not failed:
        where = f" in {scope} namespace" if scope else ""
        click.echo(f"No resources found{where}.", err=True)
    elif output in ("yaml", "json"):
        _print_documents(documents, output, single=named and len(targets) == 1)
    elif output == "name":
        for info, found in groups:
            for document in found:
                click.echo(info.qualified(document["metadata"]["name"]))
    else:
        tables = [
            resource_table(
                info.kind,
                found,
                now=time.time(),
                with_namespace=scope is None,
                wide=output == "wide",
            )
            for info, found in groups
            if found
        ]
        click.echo("\n\n".join(tables))
    if failed:
        raise SystemExit(1)


def _read_sources(filenames: Sequence[str]) -> list[tuple[str, str]]:
    """(source name, text) for each file, each config file of a directory, and stdin."""
    sources: list[tuple[str, str]] = []
    for entry in filenames:
        if entry == "-":
            sources.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(entry)
        files = (
            sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _SUFFIXES)
            if path.is_dir()
            else [path]
        )
        for file in files:
            try:
                sources.append((str(file), file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise click.FileError(str(file), hint=str(exc)) from None
    return sources


def _file_references(filenames: Sequence[str], namespace: str | None) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of every document in the files. Only those three fields are
    read, so config that no longer validates can still be deleted by its file.
    """
    import yaml  # noqa: PLC0415

    references: list[tuple[str, str, str]] = []
    for source, text in _read_sources(filenames):
        try:
            documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{source}: invalid YAML: {exc}") from None
        for number, document in enumerate(documents, start=1):
            items = document.get("items") if isinstance(document, dict) else None
            for item in items if isinstance(items, list) else [document]:
                meta = item.get("metadata") if isinstance(item, dict) else None
                if not isinstance(meta, dict) or not item.get("kind") or not meta.get("name"):
                    raise click.ClickException(
                        f"{source}: document {number}: needs kind and metadata.name"
                    )
                ns = meta.get("namespace") or namespace or DEFAULT_NAMESPACE
                references.append((str(item["kind"]), str(ns), str(meta["name"])))
    return references


@click.command()
@click.argument("resources", nargs=-1)
@click.option("-f", "--filename", "filenames", multiple=True, help=_FILENAME_HELP)
@click.option("-n", "--namespace", default=None, help=f"Namespace [default: {DEFAULT_NAMESPACE}].")
@click.option("--ignore-not-found", is_flag=True, help="A missing resource is not an error.")
@server_options
def delete(
    resources: tuple[str, ...],
    filenames: tuple[str, ...],
    namespace: str | None,
    ignore_not_found: bool,
    server: str,
    token: str | None,
) -> None:
    """Delete mesh config: `delete -f FILE` or `delete KIND NAME... [-n NS]`."""
    from trellis.cli.client import ApiError  # noqa: PLC0415
    from trellis.controlplane.api_kinds import UnknownKindError, resolve_kind  # noqa: PLC0415

    if bool(filenames) == bool(resources):
        raise click.UsageError("give either -f FILE or KIND NAME...")
    if filenames:
        try:
            targets = [
                (resolve_kind(kind), ns, name)
                for kind, ns, name in _file_references(filenames, namespace)
            ]
        except UnknownKindError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        pairs = _targets(resources[0], resources[1:])
        if any(name is None for _, name in pairs):
            raise click.UsageError("resource(s) were provided, but no name was specified")
        targets = [(info, namespace or DEFAULT_NAMESPACE, str(name)) for info, name in pairs]
    failed = False
    with api_client(server, token) as client:
        for info, ns, name in targets:
            try:
                client.delete(info, ns, name)
            except ApiError as exc:
                if exc.code != 404:
                    fail(exc)
                if not ignore_not_found:
                    click.echo(f"Error from server (NotFound): {exc.message}", err=True)
                    failed = True
                continue
            click.echo(f'{info.singular}.{info.group} "{name}" deleted')
    if failed:
        raise SystemExit(1)


@click.command()
@click.option("-f", "--filename", "filenames", multiple=True, help=_FILENAME_HELP)
@click.option(
    "--offline",
    is_flag=True,
    help="Analyze only the files, without asking the control plane.",
)
@server_options
def analyze(filenames: tuple[str, ...], offline: bool, server: str, token: str | None) -> None:
    """Find cross-resource mistakes (unknown hosts, undefined subsets, conflicts...).

    Analyzes the control plane's config, with the -f files applied on top of it;
    with --offline, only the files. Exits 1 if any finding is an error.
    """
    from trellis.cli.client import ApiError  # noqa: PLC0415

    if offline and not filenames:
        raise click.UsageError("--offline needs -f FILE")
    lines: list[str] = []
    errors = 0
    if offline:
        from trellis.api.analyze import Severity  # noqa: PLC0415
        from trellis.api.analyze import analyze as run_analysis  # noqa: PLC0415
        from trellis.api.loader import load_paths  # noqa: PLC0415
        from trellis.api.problem import ResourceError  # noqa: PLC0415

        try:
            resources = load_paths(list(filenames), stdin=sys.stdin)
        except ResourceError as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            raise SystemExit(1) from None
        for finding in run_analysis(resources):
            lines.append(str(finding))
            errors += finding.severity is Severity.ERROR
    else:
        documents = _load(filenames) if filenames else None
        with api_client(server, token) as client:
            try:
                found = client.analyze(documents)
            except ApiError as exc:
                _print_rejection(exc)
        for item in found:
            lines.append(str(item.get("text")))
            errors += item.get("severity") == "Error"
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("No validation issues found.")
    if errors:
        raise SystemExit(1)
