#!/usr/bin/env python3
"""The runtime image's contents, started for real without a Docker engine.

    image_test.py RECSTREAM_BINARY SOURCE_DIR

Builds (or reuses, see scripts/rootfs.sh) a Debian bookworm root file system
from scripts/runtime-packages.txt, the same list the Dockerfile's runtime
stage installs, and lays the runtime stage's COPY and VOLUME lines into a copy
of it. Then, inside that tree (chroot), in a network namespace of its own so
that the image's fixed port 8080 is free:

  - every library the binary needs resolves, and every library package of the
    list provides one of them (none missing, none unused);
  - `recstream --version`, `gen` and `eval` on a small stream;
  - the image's ENTRYPOINT + CMD with the compose file's environment for the
    service (less its Kafka address: the embedded broker stands in for the
    compose file's Kafka), until the compose file's own health check passes;
    then GET /v1/score over loopback;
  - the compose file's feeder command (`gen | produce`) against that broker,
    whose events the service must learn;
  - the topics the compose file creates are the ones the binary consumes;
  - the compose file's replica command, following that service, until ready
    and scoring as the service;
  - SIGTERM stops the service with its final checkpoint, exit code 0.

Exits 77 (ctest SKIP_RETURN_CODE) when this machine cannot build the root file
system or make the namespaces (not root, no mmdebstrap, no mirror), with the
reason; never passes without having run.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77
PORT = 8080  # the image's: Dockerfile CMD and compose health check


def fail(msg):
    print(f"image_test: FAILED: {msg}", flush=True)
    sys.exit(1)


def skip(msg):
    print(f"image_test: SKIPPED: {msg}", flush=True)
    sys.exit(SKIP)


def runtime_stage(dockerfile):
    """The runtime stage's instructions: (keyword, argument) after the last FROM."""
    lines, cur = [], ""
    for raw in open(dockerfile, encoding="utf-8"):
        line = raw.rstrip("\n")
        if line.lstrip().startswith("#") and not cur:
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    stage = []
    for l in lines[last_from + 1:]:
        kw, _, arg = l.partition(" ")
        stage.append((kw.upper(), arg.strip()))
    return stage


def exec_form(arg):
    """A JSON exec-form argument (["a", "b"]) as a list."""
    try:
        value = json.loads(arg)
    except json.JSONDecodeError:
        fail(f"Dockerfile: expected the exec form [\"...\"], got {arg}")
    return value


def build_root(binary, src, template, root):
    subprocess.run(["cp", "-a", template, root], check=True)
    stage = runtime_stage(os.path.join(src, "Dockerfile"))
    packages_used = any(kw == "RUN" and "runtime-packages.txt" in arg for kw, arg in stage)
    if not packages_used:
        fail("the Dockerfile's runtime stage does not install scripts/runtime-packages.txt")
    image = {"entrypoint": [], "cmd": [], "volumes": []}
    for kw, arg in stage:
        if kw == "COPY":
            parts = shlex.split(arg)
            from_build = any(p.startswith("--from=") for p in parts)
            parts = [p for p in parts if not p.startswith("--")]
            source, dest = parts[0], parts[-1]
            if from_build:
                # The build stage's binary is the one ctest built.
                if not source.endswith("/app/recstream"):
                    fail(f"Dockerfile copies an unknown build product: {source}")
                host = binary
            else:
                host = os.path.join(src, source)
            target = root + dest
            if dest.endswith("/"):
                target = os.path.join(target, os.path.basename(source))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(host, target)
        elif kw == "VOLUME":
            for v in exec_form(arg) if arg.startswith("[") else arg.split():
                os.makedirs(root + v, exist_ok=True)
                image["volumes"].append(v)
        elif kw == "ENTRYPOINT":
            image["entrypoint"] = exec_form(arg)
        elif kw == "CMD":
            image["cmd"] = exec_form(arg)
    if not image["entrypoint"]:
        fail("the Dockerfile's runtime stage has no ENTRYPOINT")
    return image


def compose_services(src):
    import yaml  # python3-yaml, installed by scripts/install-deps.sh

    with open(os.path.join(src, "docker-compose.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)["services"]


class Chroot:
    def __init__(self, root):
        self.root = root
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": "/root", "LANG": "C.UTF-8"}

    def argv(self, argv):
        return ["chroot", self.root] + argv

    def run(self, argv, timeout=120, env=None, check=True):
        p = subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout,
                           env={**self.env, **(env or {})})
        if check and p.returncode != 0:
            fail(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def popen(self, argv, env=None, **kw):
        return subprocess.Popen(self.argv(argv), env={**self.env, **(env or {})}, text=True,
                                start_new_session=True, **kw)


def check_libraries(c, packages):
    out = c.run(["ldd", "/usr/local/bin/recstream"]).stdout
    missing = [l.strip() for l in out.splitlines() if "not found" in l]
    if missing:
        fail("libraries missing from the runtime image:\n  " + "\n  ".join(missing))
    paths = re.findall(r"=> (/\S+)", out)
    owners = set()
    for path in paths:
        p = c.run(["dpkg", "-S", os.path.realpath(c.root + path)[len(c.root):]], check=False)
        if p.returncode != 0:  # /lib is a symlink to /usr/lib: try the other spelling
            p = c.run(["dpkg", "-S", path], check=False)
        for line in p.stdout.splitlines():
            owners.add(line.split(":")[0])
    for pkg in packages:
        if pkg.startswith("lib") and pkg not in owners:
            fail(f"scripts/runtime-packages.txt lists {pkg}, but the binary loads no library "
                 f"of it (it loads: {', '.join(sorted(owners))})")
    print(f"image_test: {len(paths)} libraries resolve, from {len(owners)} packages")


def http_get(path, timeout=5, port=PORT):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, json.loads(r.read())


def wait_for(what, predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    fail(f"{what}: not within {seconds} s")


def inside(binary, src, template):
    """Runs in the private network and mount namespaces."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = tempfile.mkdtemp(prefix="recstream-image-")
    try:
        root = os.path.join(work, "root")
        image = build_root(binary, src, template, root)
        subprocess.run(["mount", "-t", "proc", "proc", root + "/proc"], check=True)
        subprocess.run(["mount", "--rbind", "/dev", root + "/dev"], check=True)
        c = Chroot(root)
        packages = [l.split("#")[0].strip()
                    for l in open(os.path.join(src, "scripts/runtime-packages.txt"))]
        check_libraries(c, [p for p in packages if p])

        version = c.run(["recstream", "--version"]).stdout.strip()
        print(f"image_test: recstream --version: {version}")

        c.run(["recstream", "gen", "--events", "5000", "--users", "300", "--items", "100",
               "--seed", "3", "--out", "/tmp/stream.jsonl"])
        c.run(["recstream", "eval", "--events", "/tmp/stream.jsonl", "--report", "/tmp/report.json"])
        report = json.load(open(root + "/tmp/report.json"))
        if report.get("events") != 5000 or "auc" not in report.get("tasks", {}).get("click", {}):
            fail(f"eval report is not the expected one: {report}")
        print(f"image_test: eval learned {report['events']} events, click AUC "
              f"{report['tasks']['click']['auc']:.3f}")

        services = compose_services(src)
        service_env = dict(services["recstream"].get("environment", {}))
        # The embedded broker stands in for the compose file's Kafka.
        service_env.pop("RECSTREAM_KAFKA__BROKERS", None)
        serve_argv = image["entrypoint"] + image["cmd"]
        log = open(os.path.join(work, "serve.log"), "w+")
        serve = c.popen(serve_argv, env=service_env, stdout=subprocess.PIPE, stderr=log)
        try:
            brokers = None
            deadline = time.time() + 60
            while brokers is None and time.time() < deadline:
                line = serve.stdout.readline()
                if not line:
                    break
                m = re.search(r"Kafka bootstrap servers (\S+) \(embedded\)", line)
                if m:
                    brokers = m.group(1)
            if brokers is None:
                log.seek(0)
                fail(f"{' '.join(serve_argv)} did not start its embedded Kafka:\n{log.read()}")

            health = services["recstream"]["healthcheck"]["test"]
            if health[0] != "CMD-SHELL":
                fail(f"unexpected compose health check form: {health}")
            wait_for("the compose health check (" + health[1] + ")",
                     lambda: c.run(["/bin/sh", "-c", health[1]], check=False).returncode == 0, 60)
            status, score = http_get("/v1/score?user=1&item=i1")
            if status != 200 or not 0.0 <= score["click"] <= 1.0:
                fail(f"/v1/score answered {status} {score}")
            print(f"image_test: ready; /v1/score click {score['click']:.4f}")

            feeder = services["feeder"]
            shell = feeder["entrypoint"] + [
                feeder["command"][0] if isinstance(feeder["command"], list) else feeder["command"]]
            service_brokers = services["recstream"]["environment"]["RECSTREAM_KAFKA__BROKERS"]
            if service_brokers not in shell[-1]:
                fail(f"the feeder does not send to the service's brokers {service_brokers}")
            shell[-1] = shell[-1].replace(service_brokers, brokers)
            feed = c.popen(shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

            def learned():
                return sum(t["learned"] for t in http_get("/v1/stats")[1]["tasks"].values())

            try:
                wait_for("events from the compose feeder learned", lambda: learned() >= 2000, 60)
            finally:
                if feed.poll() is None:
                    os.killpg(feed.pid, signal.SIGTERM)
                feed_err = feed.communicate(timeout=30)[1]
            if feed.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
                fail(f"the feeder exited {feed.returncode}: {feed_err}")
            print(f"image_test: the compose feeder's events are learned ({learned()} so far)")

            config = c.run(["recstream", "config", "--print"]).stdout
            consumed = set(re.findall(r'^kafka\.topics\.\w+ = "([^"]+)"',
                                      config, re.M))
            topics_cmd = services["topics"]["command"][0]
            created = set(re.search(r"for t in ([^;]+);", topics_cmd).group(1).split())
            created |= set(re.findall(r"--topic ([A-Za-z0-9._-]+)", topics_cmd))
            if consumed != created:
                fail(f"compose creates topics {sorted(created)}, the binary uses {sorted(consumed)}")
            print(f"image_test: compose creates the binary's topics {sorted(created)}")

            # A replica as the compose file runs it, following the service.
            rep = services["replica-1"]
            rep_env = dict(rep.get("environment", {}))
            if rep_env.get("RECSTREAM_KAFKA__BROKERS") != service_brokers:
                fail("the compose replica does not follow the service's brokers")
            rep_env["RECSTREAM_KAFKA__BROKERS"] = brokers
            rep_argv = image["entrypoint"] + [
                a.replace("0.0.0.0:8080", f"0.0.0.0:{PORT + 1}") for a in rep["command"]]
            rep_log = open(os.path.join(work, "replica.log"), "w+")
            replica = c.popen(rep_argv, env=rep_env, stdout=rep_log, stderr=rep_log)
            try:
                def replica_ready():
                    try:
                        return http_get("/readyz", port=PORT + 1)[0] == 200
                    except Exception:
                        return False
                wait_for("the compose replica ready", replica_ready, 60)
                path = "/v1/score?user=1&item=i1"
                wait_for("the replica scoring as the service",
                         lambda: http_get(path, port=PORT + 1)[1] == http_get(path)[1], 30)
            except SystemExit:
                rep_log.seek(0)
                print(rep_log.read()[-3000:])
                raise
            finally:
                os.killpg(replica.pid, signal.SIGTERM)
                replica.wait(timeout=15)
            print("image_test: the compose replica is ready and scores as the service")

            os.killpg(serve.pid, signal.SIGTERM)
            rc = serve.wait(timeout=15)
            log.seek(0)
            text = log.read()
            if rc != 0 or "final checkpoint stored" not in text:
                fail(f"SIGTERM: exit {rc}, log:\n{text[-3000:]}")
            print("image_test: SIGTERM stopped the service with its final checkpoint")
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
    finally:
        subprocess.run(["umount", "-R", os.path.join(work, "root", "dev")], check=False)
        subprocess.run(["umount", os.path.join(work, "root", "proc")], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print("image_test: passed")


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--inside":
        return inside(*sys.argv[2:])
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    binary, src = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    p = subprocess.run(["bash", os.path.join(src, "scripts/rootfs.sh"), "minbase",
                        os.path.join(src, "scripts/runtime-packages.txt")],
                       capture_output=True, text=True)
    if p.returncode == SKIP:
        skip(p.stderr.strip())
    if p.returncode != 0:
        fail(f"building the root file system:\n{p.stderr}")
    template = p.stdout.strip().splitlines()[-1]
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        skip(f"cannot make network and mount namespaces (unshare): {probe.stderr.strip()}")
    os.execvp("unshare", ["unshare", "--net", "--mount", sys.executable, os.path.abspath(__file__),
                          "--inside", binary, src, template])


if __name__ == "__main__":
    main()
