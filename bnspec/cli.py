"""The ``bnspec`` command line: a contract that scripts and CI depend on.

Exit codes: 0 every adapter conforms; 1 a non-conformance; 2 bad usage or input, with one line
saying what to fix (never a traceback). Nothing here imports a framework: ``--help`` and
``list`` stay fast; the engine and the reports are imported inside the commands that use them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from bnspec.errors import BnspecError


class UsageProblem(BnspecError):
    pass


def _fail(message: str) -> None:
    raise UsageProblem(message)


def _selected(adapters: str | None, adapter_paths: tuple[str, ...]) -> list[Any]:
    from bnspec.discovery import discover, load_adapter_ref

    names = [a.strip() for a in adapters.split(",") if a.strip()] if adapters else None
    found = list(discover(names).values()) if names or not adapter_paths else []
    for ref in adapter_paths:
        found.append(load_adapter_ref(ref))
    return found


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bnspec")
def cli() -> None:
    """bnspec: does this BatchNorm behave exactly like that one, and where not, why and by how much?"""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--profiles", "profiles_only", is_flag=True,
              help="Only the profiles: every one registered, and where it comes from.")
def list_cmd(as_json: bool, profiles_only: bool) -> None:
    """Adapters found, whether their framework is installed, and its version; then every profile and
    where it is registered (no framework is imported). ``--json`` is the adapters' array, as
    scripts read it; ``--profiles --json`` the profiles'."""
    import warnings

    from bnspec.discovery import discover
    from bnspec.envs import missing_hint
    from bnspec.profiles import ProfileWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProfileWarning)
        adapters = discover()
        rows: list[dict[str, Any]] = [
            {"kind": "adapter", "name": name, "framework": a.framework, "version": a.framework_version(),
             "installed": a.installed(), "declared_profile": _declared_name(a), "description": a.description,
             **({"hint": hint} if not a.installed() and (hint := missing_hint(a)) else {})}
            for name, a in adapters.items()]
        profiles = _profile_rows(adapters)
    for w in caught:  # one line each, not Python's two-line warning format
        if issubclass(w.category, ProfileWarning):
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if as_json:
        click.echo(json.dumps(profiles if profiles_only else rows, indent=2))
        return
    if not profiles_only:
        width = max((len(r["name"]) for r in rows), default=4)
        for r in rows:
            version = r["version"] or "not installed"
            hint = f"  ({r['hint']})" if "hint" in r else ""
            click.echo(f"{r['name']:<{width}}  {r['framework']:<12} {version:<14} {r['declared_profile']}{hint}")
        click.echo("")
    click.echo("profiles:")
    width = max((len(r["name"]) for r in profiles), default=4)
    for r in profiles:
        click.echo(f"  {r['name']:<{width}}  {r['framework']:<12} {r['source']}")


def _declared_name(adapter: Any) -> str:
    """The name of the profile an adapter declares, without loading it."""
    return adapter.profile if isinstance(adapter.profile, str) else adapter.profile.name


def _profile_rows(adapters: dict[str, Any]) -> list[dict[str, Any]]:
    """``bnspec list``'s profile rows: registered ones (built-ins first), then the ones adapters
    carry themselves."""
    from importlib import metadata

    from bnspec.profiles import all_profiles, profile_source

    rows = []
    for name, p in all_profiles().items():
        src = profile_source(name)
        version = src.version if not src.builtin else metadata.version("bnspec")
        rows.append({"kind": "profile", "name": name, "framework": p.framework, "title": p.title,
                     "distribution": src.distribution, "version": version, "installed": True,
                     "builtin": src.builtin, "entry_point": src.entry_point, "source": str(src)})
    known = {r["name"] for r in rows}
    for a in adapters.values():
        p = a.profile
        if not isinstance(p, str) and p.name not in known:
            known.add(p.name)
            rows.append({"kind": "profile", "name": p.name, "framework": p.framework, "title": p.title,
                         "distribution": a.framework, "version": a.framework_version(), "installed": True,
                         "builtin": False, "entry_point": None, "source": f"carried by adapter {a.name!r}"})
    return rows


@cli.command()
@click.option("--adapters", help="Comma-separated adapter names (default: every installed one).")
@click.option("--adapter-path", "adapter_paths", multiple=True,
              help="module:attr or file.py:attr of an adapter not installed as a package.")
@click.option("--baseline", default="pytorch", show_default=True, help="Profile that divergences are measured from.")
@click.option("--properties", help="Comma-separated properties (default: all).")
@click.option("--examples", default=3, show_default=True, type=int, help="Cases per property.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--jobs", default=1, show_default=True, type=int, help="Adapters run in parallel.")
@click.option("--timeout", default=120.0, show_default=True, type=float,
              help="Seconds per case before the worker is restarted.")
@click.option("--memory-limit", "memory_limit", default=8192, show_default=True, type=int,
              help="MiB of resident memory a worker may use before its case is stopped (0: no limit).")
@click.option("--known", "known_path", type=click.Path(path_type=Path),
              help="Registry of known divergences (TOML; default: bnspec's own). "
                   "'none': treat every divergence as new.")
@click.option("--shrink/--no-shrink", default=True, show_default=True,
              help="Shrink each failure to a minimal case with Hypothesis.")
@click.option("--out", default="bnspec-out", show_default=True, type=click.Path(path_type=Path))
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Neither read nor write the result cache ($BNSPEC_CACHE_DIR, else the user cache "
                   "directory): compute every case.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Complete the interrupted run in this directory (its options are read from it).")
@click.pass_context
def run(ctx: click.Context, adapters: str | None, adapter_paths: tuple[str, ...], baseline: str,
        properties: str | None, examples: int, seed: int, jobs: int, timeout: float, memory_limit: int,
        known_path: Path | None, shrink: bool, out: Path, no_cache: bool, resume_dir: Path | None) -> None:
    """Run the conformance properties; write results.jsonl, summary.json, report.md, report.html, junit.xml.

    A case whose result the result cache holds, for this bnspec, adapter, environment and options,
    is read from it (marked ↺ in the reports); --no-cache computes every case."""
    from bnspec.engine import RunOptions
    from bnspec.engine import run as engine_run
    from bnspec.known import load as load_known
    from bnspec.profiles import get_profile
    from bnspec.properties import PROPERTIES
    from bnspec.reports import write_all

    if examples < 1:
        _fail(f"--examples must be at least 1 (got {examples})")
    if jobs < 1:
        _fail(f"--jobs must be at least 1 (got {jobs})")
    if timeout <= 0:
        _fail(f"--timeout must be positive (got {timeout:g})")
    if memory_limit < 0:
        _fail(f"--memory-limit must be 0 (no limit) or a number of MiB (got {memory_limit})")
    if resume_dir is not None:
        fixed = ("adapters", "adapter_paths", "baseline", "properties", "examples", "seed", "out")
        given = [f"--{n.replace('_', '-')}" for n in fixed
                 if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
        if given:
            _fail(f"--resume reads the run's options from {resume_dir}; drop {', '.join(given)}")
        chosen, props, examples, seed, baseline = _resumed(resume_dir)
        out = resume_dir
    else:
        props = [p.strip() for p in properties.split(",")] if properties else list(PROPERTIES)
        for p in props:
            if p not in PROPERTIES:
                from bnspec.errors import UnknownName

                raise UnknownName("property", p, list(PROPERTIES))
        chosen = _selected(adapters, adapter_paths)
        if not adapters and not adapter_paths:
            chosen = [a for a in chosen if a.installed()]
    get_profile(baseline)
    _check_writable(out)
    if not chosen:
        _fail("no adapter to run: install a framework or name one with --adapters / --adapter-path")
    for a in chosen:
        a.declared_profile()
    known = [] if known_path is not None and str(known_path) == "none" else load_known(known_path)
    opts = RunOptions(properties=props, examples=examples, seed=seed, baseline=baseline, jobs=jobs,
                      timeout=timeout, known=known, shrink=shrink, memory_limit_mb=memory_limit or None,
                      cache=not no_cache)
    with _Progress(chosen, opts) as progress:
        summary = engine_run(chosen, opts, out, progress=progress, resume=resume_dir is not None)
    write_all(summary, out)
    bad = [a["name"] for a in summary["adapters"] if not a["conforms"]]
    n_known = sum(len(a.get("known_divergences", [])) for a in summary["adapters"])
    n_cached = sum(a.get("cached", 0) for a in summary["adapters"])
    click.echo(f"{len(summary['adapters'])} adapter(s), {len(bad)} not conforming"
               + (f": {', '.join(bad)}" if bad else "") + f"; {n_known} known divergence(s) seen"
               + (f", {len(summary['known_vanished'])} known divergence(s) did not show: "
                  + ", ".join(v["id"] for v in summary["known_vanished"]) if summary["known_vanished"] else "")
               + (f"; {n_cached} case(s) from the result cache" if n_cached else "")
               + f". Reports in {out}/", err=True)
    sys.exit(1 if bad else 0)


def _resumed(directory: Path) -> tuple[list[Any], list[str], int, int, str]:
    from bnspec.discovery import load_adapter_ref
    from bnspec.engine import stored_run

    stored = stored_run(directory)
    chosen = [load_adapter_ref(ref) for _, ref in sorted(stored["adapters"].items())]
    return chosen, stored["properties"], stored["examples"], stored["seed"], stored["baseline"]


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".bnspec-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        _fail(f"--out {out} is not writable: {exc.strerror or exc}")


class _Progress:
    """Progress per adapter (cases done, non-conformances so far): rich bars on a terminal,
    one line per finished adapter otherwise (CI logs). rich honours NO_COLOR."""

    def __init__(self, adapters: list[Any], opts: Any) -> None:
        self.total = len(opts.properties) * opts.examples
        self.done: dict[str, int] = {}
        self.bad: dict[str, int] = {}
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}
        self.live = sys.stderr.isatty() or os.environ.get("BNSPEC_PROGRESS") == "1"
        self.names = [a.name for a in adapters]

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[bad]} not conforming"), TimeElapsedColumn(),
                                 console=Console(stderr=True))
            self.bars.start()
            self.tasks = {n: self.bars.add_task(n, total=self.total, bad=0) for n in self.names}
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bars is not None:
            self.bars.stop()

    def __call__(self, name: str, rec: Any) -> None:
        self.done[name] = self.done.get(name, 0) + 1
        self.bad[name] = self.bad.get(name, 0) + bool(rec.bad)
        if self.bars is not None:
            self.bars.update(self.tasks[name], advance=1, bad=self.bad[name])
        elif self.live or self.done[name] == self.total:
            click.echo(f"[{name}] {self.done[name]}/{self.total} cases, {self.bad[name]} not conforming", err=True)


@cli.command()
@click.argument("adapter")
@click.option("--adapter-path", "adapter_path", is_flag=True, help="ADAPTER is a module:attr reference.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--seed", default=0, type=int)
def fingerprint(adapter: str, adapter_path: bool, as_json: bool, seed: int) -> None:
    """The knob values ADAPTER is observed to implement, inferred from probes, beside its declared profile."""
    from bnspec.fingerprint import fingerprint as run_fingerprint

    chosen = _selected(None, (adapter,)) if adapter_path or ":" in adapter else _selected(adapter, ())
    result = run_fingerprint(chosen[0], seed=seed)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=repr))
        return
    click.echo(f"{result['adapter']}: declared profile {result['declared_profile']}, "
               f"{result['probes_run']} probe run(s)\n")
    click.echo(f"  {'knob':<20} {'observed':<26} {'declared':<20} {'status':<13} decided by")
    reasons = []
    for k, row in result["knobs"].items():
        status = row.get("status", "decided" if row["agrees"] else "differs")
        observed = str(row["observed"])
        if status == "not probed":
            reasons.append(f"  {k}: {observed.removeprefix('not probed').strip(' ()')}")
            observed = "-"
        mark = "" if row["agrees"] else "  <-- differs"
        click.echo(f"  {k:<20} {observed:<26} {row['declared']!r:<20} {status:<13} "
                   f"{row.get('decided_by') or ''}{mark}")
        if not row["agrees"] and row.get("evidence"):
            click.echo(f"  {'':<20} evidence: {row['evidence']}")
        if row.get("note"):
            click.echo(f"  {'':<20} note: {row['note']}")
    if reasons:
        click.echo("\nnot probed:\n" + "\n".join(reasons))


@cli.command()
@click.argument("from_")
@click.argument("to")
def diff(from_: str, to: str) -> None:
    """The porting guide from profile FROM_ to profile TO (adapter names resolve to their profile)."""
    from bnspec.porting import porting_guide

    click.echo(porting_guide(_profile_of(from_), _profile_of(to)))


def _profile_of(name: str) -> Any:
    """A profile name, or an adapter's name standing for the profile it declares (a name or the
    Profile object it carries)."""
    from bnspec.profiles import profile_names

    if name in profile_names():
        return name
    from bnspec.discovery import adapter_names, discover

    if name in adapter_names():
        return discover([name])[name].profile
    from bnspec.errors import UnknownName

    raise UnknownName("profile or adapter", name, list(dict.fromkeys([*profile_names(), *adapter_names()])))


@cli.group()
def report() -> None:
    """Work with reports."""


@report.command("merge")
@click.argument("summaries", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
def merge(summaries: tuple[Path, ...], out: Path) -> None:
    """Merge summary.json files from several machines or CI shards into one report."""
    from bnspec.merge import merge_summaries
    from bnspec.reports import write_all

    loaded = []
    for p in summaries:
        try:
            loaded.append((p, json.loads(p.read_text(encoding="utf-8"))))
        except FileNotFoundError:
            _fail(f"summary {p} does not exist")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            _fail(f"summary {p} is not valid JSON ({exc.__class__.__name__}: line {getattr(exc, 'lineno', '?')})")
    _check_writable(out)
    merged, conflicts = merge_summaries(loaded)
    write_all(merged, out)
    for c in conflicts:
        click.echo(f"conflict: {c}", err=True)
    click.echo(f"merged {len(loaded)} summaries into {out}/", err=True)


@cli.command()
@click.argument("case_id")
@click.option("--dir", "directory", default="bnspec-out", show_default=True, type=click.Path(path_type=Path))
def repro(case_id: str, directory: Path) -> None:
    """Replay a stored minimal case against its adapter and print a snippet in the framework's API."""
    from bnspec.repro import replay

    code, text = replay(case_id, directory)
    click.echo(text)
    sys.exit(code)


def _add_envs() -> None:
    from bnspec.envs import cli as envs  # stdlib and click only: --help stays fast

    cli.add_command(envs, "envs")


_add_envs()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except BnspecError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
