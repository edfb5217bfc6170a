"""A job request as the API takes it, checked against the options the CLI declares, and the
command line the hub runs for it.

The options are the very dataclasses the CLI reads (layerwise.options, layerwise.spec): a
field the CLI has, the API has, with the same name, type, bound and check. What the hub
decides itself is refused when a request sets it (where the bundle goes, the results
database, the agent's URL and token), and what names a file on the server must name an
upload (`upload:ID`), so no request reads a path of the server's, nor imports code
(`module:factory` specs and metrics are refused).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.base.errors import LayerwiseError
from layerwise.base.params import check, flag

KINDS = ("compile", "analyze", "profile")
# set by the hub itself, never by a request
SERVER_SET = {"out", "force", "db", "token_file", "remote", "distributed"}
# name a file: only an upload of this hub
FILE_VALUED = {"weights", "data", "eval", "tune_db"}
SPEC_SCHEMES = "timm:NAME, torchvision:NAME, zoo:NAME, hf:NAME (a folder of the hub's " \
               "--models-dir) or upload:ID (an uploaded .pt2)"
JOB_DIR = "{job_dir}"  # replaced by the job's folder when it runs


class RequestError(LayerwiseError):
    """A refused request: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def option_classes(kind: str) -> tuple[type, ...]:
    """The option dataclasses a job of KIND takes (as the CLI's subcommand does)."""
    from layerwise.options import AnalyzeOptions, CompileOptions, ProfileOptions
    from layerwise.spec import SourceOptions

    return {"compile": (CompileOptions, SourceOptions), "analyze": (AnalyzeOptions,
                                                                    SourceOptions),
            "profile": (ProfileOptions,)}[kind]


def accepted_fields(kind: str) -> dict[str, dataclasses.Field]:
    """Every option a request of KIND may set, by name."""
    return {f.name: f for cls in option_classes(kind) for f in dataclasses.fields(cls)
            if f.name not in SERVER_SET}


@dataclass(frozen=True)
class Hub:
    """Where the hub keeps things (what a request's names resolve against)."""

    data_dir: Path
    models_dir: Path | None
    store: Any  # layerwise.hub.store.Store

    @property
    def history_db(self) -> Path:
        return self.data_dir / "runs.db"

    def upload_path(self, upload_id: str) -> Path:
        up = self.store.upload(upload_id) if re.fullmatch(r"[0-9a-f]{32}", upload_id) else None
        if up is None:
            raise RequestError(400, f"unknown upload {upload_id!r}: POST the file to "
                               "/api/v1/uploads first and use the id it returns")
        return self.data_dir / "uploads" / upload_id / up["name"]

    def job_dir(self, job_id: int) -> Path:
        return self.data_dir / "jobs" / str(job_id)

    def agent_token_file(self, name: str) -> Path:
        return self.data_dir / "devices" / f"{name}.token"


@dataclass(frozen=True)
class Planned:
    """A checked request: what the job is and the command line it runs."""

    kind: str
    spec: str
    argv: list[str]
    agent: str | None
    request: dict


def plan_job(body: Any, hub: Hub) -> Planned:
    """Check a request body and turn it into the job's command line; RequestError (400) on
    anything the CLI would refuse, and on what the hub does not allow."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object: {\"kind\": ..., \"spec\": "
                           "..., \"options\": {...}}")
    unknown = set(body) - {"kind", "spec", "bundle", "options", "agent"}
    if unknown:
        raise RequestError(400, f"unknown field {sorted(unknown)[0]!r}; a job takes kind, spec "
                           "(or bundle for profile), options, agent")
    kind = body.get("kind")
    if kind not in KINDS:
        raise RequestError(400, f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "options must be a JSON object of option: value")
    values = _check_options(kind, options, hub)
    agent = _agent(body.get("agent"), hub)
    argv = [sys.executable, "-m", "layerwise", kind]
    if kind == "profile":
        spec = _bundle_ref(body.get("bundle"), hub)
        argv.append(str(hub.job_dir(int(spec[4:])) / "bundle"))
    else:
        if "bundle" in body:
            raise RequestError(400, f"a {kind} job takes a spec, not a bundle")
        spec = str(body.get("spec") or "")
        argv += [resolve_spec(spec, hub), "--out", f"{JOB_DIR}/{_out_name(kind)}"]
    for name, value in values.items():
        if value is None or value is False:
            continue
        argv += [flag(name)] if value is True else [flag(name), str(value)]
    if agent is not None:
        if kind == "analyze":
            raise RequestError(400, "analyze runs on the hub; agent goes with compile "
                               "(--max-drop's latency) or profile")
        if kind == "compile" and values.get("max_drop") is None:
            raise RequestError(400, "a compile on an agent measures the plan search's "
                               "candidates there: add max_drop (or profile the bundle)")
        argv += ["--remote", agent["url"], "--token-file", str(hub.agent_token_file(
            agent["name"]))]
    argv += ["--db", str(hub.history_db), "--json"]
    request = {"kind": kind, "spec": spec, "options": options,
               **({"agent": agent["name"]} if agent else {})}
    return Planned(kind, spec, argv, agent["name"] if agent else None, request)


def _out_name(kind: str) -> str:
    return "bundle" if kind == "compile" else "analysis"


def _check_options(kind: str, options: dict, hub: Hub) -> dict[str, Any]:
    fields = accepted_fields(kind)
    values: dict[str, Any] = {}
    for name, value in options.items():
        key = name.replace("-", "_")
        if key in SERVER_SET:
            raise RequestError(400, f"option {name!r} is set by the hub, not by a request")
        if key not in fields:
            raise RequestError(400, f"unknown option {name!r} for {kind}; GET "
                               f"/api/v1/options lists them")
        values[key] = _typed(key, value, str(fields[key].type), kind)
    for key in FILE_VALUED & values.keys():
        if values[key] is not None:
            values[key] = str(_upload_ref(values[key], key, hub))
    if kind == "compile" and values.get("metric") and ":" in str(values["metric"]):
        raise RequestError(400, "the hub computes built-in metrics only (module:function "
                           "would run code on the server)")
    if kind == "profile" and values.get("baseline_spec"):
        values["baseline_spec"] = resolve_spec(str(values["baseline_spec"]), hub)
    try:
        for cls in option_classes(kind):
            built = cls(**{k: v for k, v in values.items()
                           if k in {f.name for f in dataclasses.fields(cls)}})
            check(built)
            if kind == "compile" and cls.__name__ == "CompileOptions":
                from layerwise.options import check_compile

                check_compile(dataclasses.replace(built, out="bundle"))
    except LayerwiseError as e:
        raise RequestError(400, _line(e)) from None
    return values


def _typed(name: str, value: Any, typ: str, kind: str) -> Any:
    """VALUE as the field's type; RequestError naming the option otherwise."""
    if value is None:
        return None
    want = typ.replace(" | None", "")
    ok = {"bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, (str, int, float)) and not isinstance(value, bool)}
    if not ok.get(want, False):
        raise RequestError(400, f"option {name!r} of {kind} takes {want}, got "
                           f"{type(value).__name__}")
    value = str(value) if want == "str" else value
    if want == "str" and ("\n" in value or len(value) > 4096):
        raise RequestError(400, f"option {name!r}: one line of at most 4096 characters")
    return value


def _upload_ref(value: str, name: str, hub: Hub) -> Path:
    if not value.startswith("upload:"):
        raise RequestError(400, f"option {name!r} names a file: give upload:ID (POST the "
                           "file to /api/v1/uploads first)")
    return hub.upload_path(value[len("upload:"):])


def resolve_spec(spec: str, hub: Hub) -> str:
    """The SPEC the job's command line gets: a name the hub can load, or the path of an
    uploaded .pt2. RequestError (400) for anything else."""
    scheme, _, rest = spec.partition(":")
    if not rest or ("/" in rest and scheme != "hf") or "\n" in rest or len(rest) > 200:
        raise RequestError(400, f"unknown spec {spec!r}; use {SPEC_SCHEMES}")
    if scheme == "upload":
        path = hub.upload_path(rest)
        if path.suffix != ".pt2":
            raise RequestError(400, f"upload {rest} is {path.name!r}, not a .pt2 program")
        return str(path)
    if scheme == "timm":
        import timm

        known = timm.is_model(rest)
    elif scheme == "torchvision":
        import torchvision

        known = rest in torchvision.models.list_models()
    elif scheme == "zoo":
        from layerwise.sources.zoo import ZOO

        known = rest in ZOO
    elif scheme == "hf" and hub.models_dir is not None:
        folder = hub.models_dir / rest
        known = (re.fullmatch(r"[\w.-]+", rest) is not None and ".." not in rest
                 and (folder / "config.json").is_file())
        if known:
            return f"hf:{folder}"
    else:
        known = False
    if not known:
        raise RequestError(400, f"unknown spec {spec!r}; use {SPEC_SCHEMES}")
    return spec


def _bundle_ref(ref: Any, hub: Hub) -> str:
    m = re.fullmatch(r"job:(\d+)", str(ref or ""))
    job = hub.store.job(int(m[1])) if m else None
    if job is None or job["kind"] != "compile":
        raise RequestError(400, f"bundle {ref!r}: name a compile job's bundle as job:ID")
    if job["state"] != "done":
        raise RequestError(400, f"bundle job:{job['id']} is {job['state']}, not done")
    return f"job:{job['id']}"


def _agent(name: Any, hub: Hub) -> dict | None:
    if name is None:
        return None
    dev = hub.store.device(str(name))
    if dev is None:
        raise RequestError(400, f"unknown device {name!r}; GET /api/v1/devices lists the "
                           "fleet")
    return dev


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
