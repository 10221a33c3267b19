"""The deployment files (docker-compose.yml, Dockerfile, deploy/qwen-proxy.service), checked
without a Docker engine or a running systemd:

- docker-compose.yml is parsed as YAML; its wiring is checked, and every service's command
  is split the way Compose splits it and any `sh -c` script is syntax-checked with `sh -n`;
- the Dockerfile is checked statically (shell snippets through `sh -n`, dependency caching,
  build context), and its HEALTHCHECK command is run against a local HTTP server playing
  the proxy's /health answers;
- the systemd unit goes through `systemd-analyze verify` and is checked for how it gets its
  configuration, its working directory, its hardening and its stop timeout.

DEPLOY_FILES_ROOT points the checks at another tree, e.g. the files of an older commit:
    git archive HEAD | tar -x -C /tmp/old && DEPLOY_FILES_ROOT=/tmp/old pytest tests/deploy
"""

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(os.environ.get("DEPLOY_FILES_ROOT") or Path(__file__).resolve().parents[2])
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "deploy" / "qwen-proxy.service"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"

# Where DEPLOYMENT.md installs the binary and the configuration for systemd.
UNIT_BINARY = "/usr/local/bin/qwen-proxy"
UNIT_ENV_FILE = "/etc/qwen-proxy/env"

# /health waits up to this long for its upstream probe (src/app.rs, `upstream_health`).
HEALTH_UPSTREAM_PROBE_S = 5

SHELLS = {"sh", "ash", "dash", "bash"}


# ---------------------------------------------------------------------------------------------
# Helpers


def shutdown_grace_default_s():
    """SHUTDOWN_GRACE's default, in seconds, as the configuration code declares it."""
    src = "".join(p.read_text() for p in sorted((ROOT / "src" / "config").glob("*.rs")))
    m = re.search(r'"SHUTDOWN_GRACE",\s*([0-9_]+)', src)
    assert m, "SHUTDOWN_GRACE default not found in src/config/"
    return int(m.group(1).replace("_", "")) / 1000


def duration_s(text):
    """A Compose / Docker duration ("45s", "1m30s", "1h", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    text = str(text).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def systemd_seconds(text):
    """A systemd time span ("45", "45s", "1min 30s") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 1e-3}
    parts = re.findall(r"(\d+)\s*([a-z]*)", text.strip())
    assert parts, f"not a time span: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def load_compose():
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services"
    return data


def environment(service):
    """A service's `environment`, mapping or list form, as a dict of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def compose_interpolate(value):
    """What Compose makes of `$` in a value: `$$` is a literal `$`; `$NAME` / `${NAME}` are
    replaced from the host's environment at parse time, which in a command meant for the
    container's shell is a bug. Returns (value with `$$` unescaped, lone `$` references)."""
    lone = re.findall(r"(?<!\$)\$(?:\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", value.replace("$$", ""))
    return value.replace("$$", "$"), lone


def service_argv(service):
    """The argv Compose gives the container for `entrypoint` + `command` (only what the
    compose file sets; the image's own ENTRYPOINT/CMD are not known here). Compose splits a
    string with shell-like word splitting, without running a shell."""
    argv = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            argv += shlex.split(value)
        else:
            assert isinstance(value, list), f"{key} is neither a string nor a list"
            argv += [str(v) for v in value]
    return argv


def shell_script(argv):
    """(shell, script) when argv runs `sh -c SCRIPT` (or -ec, -euc, … or bash), else None."""
    if not argv or os.path.basename(argv[0]) not in SHELLS:
        return None
    for i, arg in enumerate(argv[1:], start=1):
        if not arg.startswith("-"):
            return None
        if "c" in arg[1:] and not arg.startswith("--"):
            assert i + 1 < len(argv), f"{argv[0]} {arg} without a script"
            return os.path.basename(argv[0]), argv[i + 1]
    return None


def sh_n(shell, script):
    """`sh -n`: parse without running. Returns (exit code, diagnostics)."""
    binary = "bash" if shell == "bash" else "sh"
    r = subprocess.run([binary, "-n", "-c", script], capture_output=True, text=True, timeout=30)
    return r.returncode, (r.stdout + r.stderr).strip()


def last_command(script):
    """The words of a script's last simple command: its last line (continuations joined),
    after the line's last `&&`, `||`, `;`, `|` or `&`."""
    lines = [ln for ln in script.replace("\\\n", " ").splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        return []
    lexer = shlex.shlex(lines[-1], posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    words = []
    for token in lexer:
        words = [] if set(token) <= set(";&|") else words + [token]
    return words


def dockerfile_instructions():
    """[(KEYWORD, arguments)] with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1]
            continue
        current += line
        if current.strip():
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def split_flags(args):
    """Leading `--flag=value` options of an instruction, and the rest."""
    flags = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        flags.append(flag)
        args = args.lstrip()
    return flags, args


def healthcheck():
    """(options, command, form) of the Dockerfile's HEALTHCHECK."""
    found = [args for kw, args in dockerfile_instructions() if kw == "HEALTHCHECK"]
    assert len(found) == 1, "the Dockerfile needs exactly one HEALTHCHECK"
    flags, rest = split_flags(found[0])
    options = dict(f[2:].split("=", 1) for f in flags)
    assert rest.startswith("CMD "), f"HEALTHCHECK without CMD: {found[0]!r}"
    cmd = rest[4:].strip()
    return options, cmd, ("exec" if cmd.startswith("[") else "shell")


def build_stage():
    """Instructions of the first stage (the build), up to the next FROM."""
    stages, current = [], None
    for kw, args in dockerfile_instructions():
        if kw == "FROM":
            current = []
            stages.append(current)
        elif current is not None:
            current.append((kw, args))
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    return stages[0]


def dockerignored(path):
    patterns = [
        p.strip().lstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]
    parts = Path(path).parts
    return any(fnmatch.fnmatch("/".join(parts[: i + 1]), p) for p in patterns for i in range(len(parts)))


def parse_unit(path):
    """{section: [(key, value)]}; keys may repeat (SystemCallFilter=, ExecStart=, …)."""
    sections, current = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(key, section="Service"):
    return [v for k, v in parse_unit(UNIT).get(section, []) if k == key]


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_has_the_three_services():
    services = load_compose()["services"]
    assert {"proxy", "redis", "nginx"} <= set(services), sorted(services)
    assert "build" in services["proxy"], "the proxy service builds the Dockerfile"


def test_compose_proxy_environment():
    services = load_compose()["services"]
    proxy = services["proxy"]
    env = environment(proxy)
    assert env.get("HOST") == "0.0.0.0", "in a container the proxy must listen on all interfaces"
    assert env.get("PORT", "").isdigit(), f"PORT={env.get('PORT')!r}"
    redis_url = env.get("REDIS_URL", "")
    m = re.fullmatch(r"redis://([^:/]+)(?::(\d+))?/?", redis_url)
    assert m and m.group(1) in services, f"REDIS_URL={redis_url!r} does not name a service"
    if env.get("TRUST_PROXY") == "true":
        # Forwarded-for headers are only trustworthy when nginx is the only way in.
        assert not proxy.get("ports"), "TRUST_PROXY=true but the proxy publishes ports"


def test_compose_nginx_reaches_the_proxy():
    services = load_compose()["services"]
    nginx, port = services["nginx"], environment(services["proxy"])["PORT"]
    conf = NGINX_CONF.read_text()
    listen = re.search(r"^\s*listen\s+(\d+)\s*;", conf, re.M)
    published = [str(p).rsplit(":", 1)[-1] for p in nginx.get("ports", [])]
    assert listen and listen.group(1) in published, f"nginx listens on {listen and listen.group(1)}, publishes {published}"
    mounts = [str(v).split(":") for v in nginx.get("volumes", [])]
    sources = {m[1]: m[0] for m in mounts if len(m) >= 2}
    assert "/etc/nginx/qwen-proxy.conf.in" in sources, sources
    assert (ROOT / sources["/etc/nginx/qwen-proxy.conf.in"]).resolve() == NGINX_CONF.resolve()
    found = shell_script(service_argv(nginx))
    assert found, "the nginx service must template its configuration with `sh -c`"
    rewrite = re.search(r"sed\s+'s/([^/]+)/([^/]+)/'", found[1])
    assert rewrite, "no sed rewrite of the upstream address"
    assert re.search(rf"^\s*server\s+{re.escape(rewrite.group(1))}\s*;", conf, re.M), (
        f"deploy/nginx.conf has no `server {rewrite.group(1)};` to rewrite"
    )
    assert rewrite.group(2) == f"proxy:{port}", f"nginx would proxy to {rewrite.group(2)}, not proxy:{port}"


@pytest.mark.parametrize("name", ["proxy", "nginx"])
def test_compose_stop_grace_period_exceeds_shutdown_grace(name):
    """Docker sends SIGKILL after stop_grace_period (10 s unless set); the proxy needs
    SHUTDOWN_GRACE to drain its streams, and nginx (stopped first, as it depends on the
    proxy) carries the same streams."""
    services = load_compose()["services"]
    grace = shutdown_grace_default_s()
    configured = environment(services["proxy"]).get("SHUTDOWN_GRACE")
    if configured:
        grace = max(grace, int(configured) / 1000)
    period = services[name].get("stop_grace_period")
    assert period is not None, f"{name}: no stop_grace_period (Docker's default is 10 s)"
    assert duration_s(period) > grace, f"{name}: stop_grace_period {period} <= SHUTDOWN_GRACE {grace} s"


def test_compose_commands_pass_sh_n():
    """Every service command as the container receives it; `sh -c` scripts through `sh -n`,
    other commands as the argv they are (quoted back for `sh -n`)."""
    services = load_compose()["services"]
    problems, scripts = [], 0
    for name, service in services.items():
        argv = service_argv(service)
        if not argv:
            continue
        unescaped = []
        for arg in argv:
            value, lone = compose_interpolate(arg)
            if lone:
                problems.append(f"{name}: Compose would interpolate {lone} from the host (write $$)")
            unescaped.append(value)
        found = shell_script(unescaped)
        if found:
            scripts += 1
            shell, script = found
            rc, diag = sh_n(shell, script)
            if rc != 0:
                problems.append(f"{name}: {shell} -n rejects the script: {diag}\n--- script ---\n{script}")
            elif last_command(script)[:1] != ["exec"]:
                problems.append(f"{name}: the script's last command should `exec` the server (stop signal)")
        else:
            rc, diag = sh_n("sh", shlex.join(unescaped))
            if rc != 0:
                problems.append(f"{name}: {diag}")
    assert scripts >= 1, "expected at least the nginx service's `sh -c` script"
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_shell_snippets_pass_sh_n():
    problems, checked = [], 0
    for kw, args in dockerfile_instructions():
        if kw == "RUN":
            _, cmd = split_flags(args)
        elif kw == "HEALTHCHECK":
            _, cmd, form = healthcheck()
            if form == "exec":
                continue
        else:
            continue
        if cmd.startswith("["):
            continue  # exec form: no shell
        checked += 1
        rc, diag = sh_n("sh", cmd)
        if rc != 0:
            problems.append(f"{kw} {cmd!r}: {diag}")
    assert checked >= 3, f"only {checked} shell snippets found"
    assert not problems, "\n".join(problems)


def test_dockerfile_caches_dependencies():
    """The cargo build runs with BuildKit cache mounts for the crate registry and target/, so
    a source edit does not recompile every dependency; the binary leaves the cache mount in
    the same RUN (a cache mount is not part of the image)."""
    first = DOCKERFILE.read_text().splitlines()[0]
    assert re.fullmatch(r"#\s*syntax=docker/dockerfile:1(\.\d+)*", first.strip()), "cache mounts need the BuildKit syntax line"
    stage = build_stage()
    workdir = next((a for k, a in stage if k == "WORKDIR"), "/")
    builds = [a for k, a in stage if k == "RUN" and "cargo build" in a]
    assert len(builds) == 1, f"expected one cargo build RUN, found {len(builds)}"
    flags, cmd = split_flags(builds[0])
    cached = {
        dict(kv.split("=", 1) for kv in f[len("--mount="):].split(",")).get("target")
        for f in flags
        if f.startswith("--mount=") and "type=cache" in f
    }
    assert "/usr/local/cargo/registry" in cached, f"registry not cached: {cached}"
    target = os.path.join(workdir, "target")
    assert target in cached, f"{target} not cached: {cached}"
    copies = [a for k, a in dockerfile_instructions() if k == "COPY" and a.startswith("--from=build ")]
    assert copies, "the runtime stage copies nothing from the build stage"
    for copy in copies:
        source = copy.split()[1]
        assert not any(source == c or source.startswith(c + "/") for c in cached), (
            f"COPY {source}: inside a cache mount, absent from the build image"
        )
        assert source in cmd, f"COPY {source}: the cargo build RUN does not put the binary there"


def test_dockerfile_build_context():
    """What the build stage copies exists and is not excluded by .dockerignore; the bench
    files that Cargo.toml declares are there (cargo will not parse the manifest otherwise);
    secrets stay out of the context; the entrypoint is the binary the runtime stage copies."""
    for kw, args in build_stage():
        if kw == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    copied = {src.rstrip("/") for kw, args in build_stage() if kw == "COPY" for src in args.split()[:-1]}
    benches = tomllib.loads((ROOT / "Cargo.toml").read_text()).get("bench", [])
    for bench in benches:
        path = bench.get("path", f"benches/{bench['name']}.rs")
        assert (ROOT / path).exists(), f"{path} declared in Cargo.toml, missing"
        assert path.split("/")[0] in copied, f"{path} is not copied into the build stage"
    assert dockerignored(".env"), ".env (credentials) must be excluded from the build context"
    entry = [json.loads(a) for k, a in dockerfile_instructions() if k == "ENTRYPOINT"]
    runtime_copies = [a.split()[-1] for k, a in dockerfile_instructions() if k == "COPY" and a.startswith("--from=build")]
    assert entry and entry[-1][0] in runtime_copies, f"ENTRYPOINT {entry} is not a copied binary {runtime_copies}"


class HealthServer:
    """A stand-in for the proxy's GET /health: answers (status, body) as set."""

    def __init__(self):
        self.answer = (200, {"status": "ok"})
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = outer.answer if self.path == "/health" else (404, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def run_healthcheck(port):
    options, cmd, form = healthcheck()
    argv = json.loads(cmd) if form == "exec" else ["/bin/sh", "-c", cmd]  # Docker's shell form
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(port)}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_unhealthy_while_draining():
    """The HEALTHCHECK command itself, run against /health's answers: healthy on `ok` and on
    `degraded` (both 200), unhealthy on 503 `draining` and when nothing answers. Docker
    counts any non-zero exit as a failed check (1 is the documented code)."""
    assert shutil.which("curl"), "curl is needed to run the HEALTHCHECK command (scripts/test.sh installs it)"
    server = HealthServer()
    try:
        results = {}
        for status, body in [(200, "ok"), (200, "degraded"), (503, "draining")]:
            server.answer = (status, {"status": body})
            results[body] = run_healthcheck(server.port)
    finally:
        server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    results["not listening"] = run_healthcheck(closed_port)
    assert results["ok"] == 0, results
    assert results["degraded"] == 0, results
    assert results["draining"] == 1, results
    assert results["not listening"] == 1, results


def test_healthcheck_timeout_covers_the_upstream_probe():
    """/health may wait HEALTH_UPSTREAM_PROBE_S for its upstream probe; a shorter timeout
    would report a merely degraded instance as unhealthy."""
    options, cmd, _ = healthcheck()
    timeout = duration_s(options.get("timeout", "30s"))
    assert timeout > HEALTH_UPSTREAM_PROBE_S, f"HEALTHCHECK --timeout={options.get('timeout')}"
    m = re.search(r"(?:--max-time|-m)[ =](\d+(?:\.\d+)?)", cmd)
    if m:
        assert HEALTH_UPSTREAM_PROBE_S < float(m.group(1)) < timeout, f"curl --max-time {m.group(1)}"


# ---------------------------------------------------------------------------------------------
# deploy/qwen-proxy.service


def test_unit_passes_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` must report nothing. The binary is not installed here, so the
    checked copy's ExecStart runs a stand-in executable at a temporary path; everything else
    (arguments included) is the unit as shipped."""
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert os.access(analyze, os.X_OK), "systemd-analyze missing (apt-get install systemd)"
    stand_in = tmp_path / "bin" / "qwen-proxy"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    pattern = re.compile(r"^(Exec\w+=[-@:+!]*)" + re.escape(UNIT_BINARY) + r"(?=\s|$)", re.M)
    checked, n = pattern.subn(lambda m: m.group(1) + str(stand_in), text)
    assert n >= 1, f"no Exec line runs {UNIT_BINARY} (the path DEPLOYMENT.md installs to)"
    unit = tmp_path / "units" / UNIT.name
    unit.parent.mkdir()
    unit.write_text(checked)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    report = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and not report, f"systemd-analyze verify (exit {r.returncode}):\n{report}"


def test_unit_gets_its_configuration_from_systemd():
    """systemd reads EnvironmentFile= as root; the DynamicUser process cannot read the 0600
    file, so the binary must not be told to (`--env-file` failed with permission denied)."""
    exec_lines = [v for k, v in parse_unit(UNIT)["Service"] if k.startswith("Exec")]
    assert exec_lines, "no ExecStart"
    for line in exec_lines:
        assert "--env-file" not in line, f"ExecStart reads the env file itself: {line}"
        assert UNIT_ENV_FILE not in line, line
    assert [v.lstrip("-") for v in unit_values("EnvironmentFile")] == [UNIT_ENV_FILE]
    assert unit_values("DynamicUser") == ["yes"]


def test_unit_working_directory_holds_no_stray_env():
    """Without --env-file the binary reads ./.env when present: the working directory must be
    one systemd creates empty for this unit (RuntimeDirectory=), not `/` or a shared path."""
    workdirs = unit_values("WorkingDirectory")
    assert len(workdirs) == 1, f"WorkingDirectory={workdirs}"
    runtime = [d for v in unit_values("RuntimeDirectory") for d in v.split()]
    assert workdirs[0] in {f"/run/{d}" for d in runtime} | {f"%t/{d}" for d in runtime}, (
        f"WorkingDirectory={workdirs[0]} is not this unit's RuntimeDirectory ({runtime})"
    )


def test_unit_keeps_its_hardening():
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "UMask": "0077",
    }
    actual = {k: unit_values(k)[-1] if unit_values(k) else None for k in expected}
    assert actual == expected
    assert "@system-service" in unit_values("SystemCallFilter")
    assert unit_values("RestrictAddressFamilies") == ["AF_INET AF_INET6 AF_UNIX"]


def test_unit_stop_timeout_exceeds_shutdown_grace():
    timeouts = unit_values("TimeoutStopSec")
    assert timeouts, "no TimeoutStopSec (systemd's default is 90 s, but say it)"
    assert unit_values("KillSignal") in ([], ["SIGTERM"]), "the drain starts on SIGTERM"
    assert systemd_seconds(timeouts[-1]) > shutdown_grace_default_s()
