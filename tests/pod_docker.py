"""One container of a Kubernetes pod spec as `docker run` options, as far as Docker can.

`docker_run_args` maps a container (with its pod spec) to the options and arguments
that follow `docker run`; the caller adds `--detach` and any harness options. What
maps:

- image, imagePullPolicy (`--pull`), command (`--entrypoint` + arguments) and args,
  with `$(VAR)` references expanded from the container's environment as the kubelet
  does; workingDir.
- env: literal values (expanded too) and values from ConfigMaps and Secrets the
  caller hands in (`optional` honoured); envFrom likewise.
- ports: a containerPort published on 127.0.0.1 at the host port the caller picks
  for its name (or number); ports without one stay unpublished.
- securityContext, the container's over the pod's: runAsUser/runAsGroup (`--user`),
  runAsNonRoot (checked here, as the kubelet refuses uid 0), readOnlyRootFilesystem
  (`--read-only`), capabilities (`--cap-drop`/`--cap-add`), allowPrivilegeEscalation
  false (`no-new-privileges`), privileged, seccompProfile (RuntimeDefault is Docker's
  default profile; unset means Unconfined, as on a kubelet without --seccomp-default);
  the pod's fsGroup and supplementalGroups as extra groups of the process.
- resources: limits.memory (`--memory`, and no swap, like a node with swap off),
  limits.cpu (`--cpus`), requests.cpu (`--cpu-shares`, the kubelet's formula).
- volumeMounts: a volume the caller maps to a host folder becomes a bind mount
  (readOnly and subPath honoured); any other emptyDir becomes a tmpfs of its
  sizeLimit. hostPath volumes name folders on the node, so they must be mapped.
- the pod's terminationGracePeriodSeconds (`--stop-timeout`; Docker's SIGTERM then
  SIGKILL, as the kubelet does).

What does not map, and is left to the caller or out: probes (the kubelet's; the
caller polls the probe paths itself), restartPolicy (the kubelet restarts; here a
container runs once), NetworkPolicy and Services (the caller picks `--network`),
the pod's shared network and PID namespaces, fsGroup's ownership change of volumes,
emptyDir on node disk (a tmpfs counts against the memory limit), sharing one emptyDir
between containers (map it to a host folder), memory requests (scheduling only).
Any other container field, volume type or option is refused, never silently dropped.
"""

import re
from collections.abc import Mapping

# Container fields read here, and fields deliberately not reproduced (see above).
MAPPED_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "workingDir",
    "env",
    "envFrom",
    "ports",
    "resources",
    "securityContext",
    "volumeMounts",
}
KUBELET_FIELDS = {
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "terminationMessagePath",
    "terminationMessagePolicy",
}
SECURITY_FIELDS = {
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
    "seccompProfile",
}
# Pod-level securityContext fields that apply to every container.
POD_SECURITY_FIELDS = {"runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"}
PULL_POLICIES = {"Never": "never", "IfNotPresent": "missing", "Always": "always"}
_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class Unsupported(ValueError):
    """A part of the spec that `docker run` cannot reproduce."""


def memory_bytes(quantity) -> int:
    """A Kubernetes memory quantity (512Mi, 1G, 1048576) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT])?", str(quantity))
    if not match:
        raise Unsupported(f"memory quantity {quantity!r}")
    number, suffix = match.groups()
    return int(float(number) * _SUFFIXES.get(suffix, 1))


def millicpus(quantity) -> int:
    """A Kubernetes CPU quantity (250m, 1, 1.5) in thousandths of a CPU."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m)?", str(quantity))
    if not match:
        raise Unsupported(f"cpu quantity {quantity!r}")
    number, milli = match.groups()
    return round(float(number) * (1 if milli else 1000))


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` as the kubelet does: `$$` is a literal `$`, unknown stays."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def _lookup(ref: dict, kind: str, sources: Mapping[str, Mapping[str, str]]):
    """The value a configMapKeyRef/secretKeyRef names; None if optional and absent."""
    value = sources.get(ref["name"], {}).get(ref["key"])
    if value is None and not ref.get("optional", False):
        raise Unsupported(
            f"{kind} {ref['name']!r} has no key {ref['key']!r} (the kubelet would "
            "not start the container)"
        )
    return value


def resolve_env(
    container: dict,
    config_maps: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref, values = source["configMapRef"], config_maps
        elif "secretRef" in source:
            ref, values = source["secretRef"], secrets
        else:
            raise Unsupported(f"envFrom {source}")
        if ref["name"] not in values and not ref.get("optional", False):
            raise Unsupported(f"envFrom names {ref['name']!r}, which was not given")
        for key, value in values.get(ref["name"], {}).items():
            env[prefix + key] = value
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "valueFrom" in var:
            source = var["valueFrom"]
            if "configMapKeyRef" in source:
                value = _lookup(source["configMapKeyRef"], "ConfigMap", config_maps)
            elif "secretKeyRef" in source:
                value = _lookup(source["secretKeyRef"], "Secret", secrets)
            else:
                raise Unsupported(f"env {var['name']}: valueFrom {sorted(source)}")
            if value is not None:
                env[var["name"]] = value
        else:
            env[var["name"]] = ""
    return env


def security_context(pod_spec: dict, container: dict) -> dict:
    """The container's effective securityContext: its own over the pod's."""
    pod = pod_spec.get("securityContext", {})
    merged = {k: v for k, v in pod.items() if k in POD_SECURITY_FIELDS}
    merged.update(container.get("securityContext", {}))
    unknown = set(merged) - SECURITY_FIELDS
    if unknown:
        raise Unsupported(f"securityContext fields {sorted(unknown)}")
    return merged


def _security_args(pod_spec: dict, container: dict) -> list[str]:
    security = security_context(pod_spec, container)
    args = []
    user, group = security.get("runAsUser"), security.get("runAsGroup")
    if group is not None and user is None:
        raise Unsupported("runAsGroup without runAsUser: `--user` needs the user")
    if user is not None:
        args += ["--user", str(user) if group is None else f"{user}:{group}"]
    if security.get("runAsNonRoot"):
        if user is None:
            raise Unsupported("runAsNonRoot without runAsUser cannot be checked here")
        if int(user) == 0:
            raise Unsupported("runAsNonRoot with runAsUser 0: the kubelet refuses it")
    pod = pod_spec.get("securityContext", {})
    groups = [pod["fsGroup"]] if "fsGroup" in pod else []
    groups += [g for g in pod.get("supplementalGroups", []) if g not in groups]
    for extra in groups:
        args += ["--group-add", str(extra)]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if security.get("privileged"):
        args.append("--privileged")
    capabilities = security.get("capabilities", {})
    for cap in capabilities.get("drop", []):
        args += ["--cap-drop", cap]
    for cap in capabilities.get("add", []):
        args += ["--cap-add", cap]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    seccomp = security.get("seccompProfile", {}).get("type", "Unconfined")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise Unsupported(f"seccompProfile {seccomp}")
    return args


def _resource_args(container: dict) -> list[str]:
    resources = container.get("resources", {})
    args = []
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    if "memory" in limits:
        memory = str(memory_bytes(limits["memory"]))
        args += ["--memory", memory, "--memory-swap", memory]
    if "cpu" in limits:
        args += ["--cpus", f"{millicpus(limits['cpu']) / 1000:g}"]
    if "cpu" in requests:
        args += ["--cpu-shares", str(max(2, millicpus(requests["cpu"]) * 1024 // 1000))]
    return args


def _port_args(container: dict, host_ports: Mapping) -> list[str]:
    args = []
    for port in container.get("ports", []):
        number = port["containerPort"]
        host = host_ports.get(port.get("name"), host_ports.get(number))
        if host is None:
            host = port.get("hostPort")
        if host is not None:
            protocol = port.get("protocol", "TCP").lower()
            args += ["--publish", f"127.0.0.1:{host}:{number}/{protocol}"]
    return args


def _volume_args(
    pod_spec: dict, container: dict, host_paths: Mapping[str, str]
) -> list[str]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    args = []
    for mount in container.get("volumeMounts", []):
        unknown = set(mount) - {"name", "mountPath", "readOnly", "subPath"}
        if unknown:
            raise Unsupported(f"volumeMount {mount['name']}: {sorted(unknown)}")
        name, target = mount["name"], mount["mountPath"]
        read_only = bool(mount.get("readOnly"))
        volume = volumes.get(name)
        if volume is None:
            raise Unsupported(f"volumeMount {name}: no such volume in the pod")
        if name in host_paths:
            source = str(host_paths[name]).rstrip("/")
            if mount.get("subPath"):
                source = f"{source}/{mount['subPath']}"
            spec = f"type=bind,source={source},target={target}"
            args += ["--mount", spec + (",readonly" if read_only else "")]
        elif "emptyDir" in volume:
            if mount.get("subPath"):
                raise Unsupported(f"volumeMount {name}: subPath of a tmpfs")
            options = ["ro" if read_only else "rw", "exec", "nosuid", "nodev"]
            size = (volume["emptyDir"] or {}).get("sizeLimit")
            if size is not None:
                options.append(f"size={memory_bytes(size)}")
            # The kubelet makes emptyDir folders world-writable.
            options.append("mode=0777")
            args += ["--tmpfs", f"{target}:{','.join(options)}"]
        elif "hostPath" in volume:
            raise Unsupported(
                f"volume {name} is hostPath {volume['hostPath']['path']} on the node: "
                "map it to a host folder"
            )
        else:
            kind = sorted(set(volume) - {"name"})
            raise Unsupported(f"volume {name}: {kind} (map it to a host folder)")
    return args


def docker_run_args(
    pod_spec: dict,
    container: dict,
    *,
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    host_ports: Mapping | None = None,
    host_paths: Mapping[str, str] | None = None,
) -> list[str]:
    """What follows `docker run` to run `container` of `pod_spec` (see the module).

    Args:
        config_maps, secrets: name -> {key: value} for env references.
        host_ports: port name (or containerPort) -> host port on 127.0.0.1.
        host_paths: volume name -> host folder, bind-mounted instead of the volume.
    """
    unknown = set(container) - MAPPED_FIELDS - KUBELET_FIELDS
    if unknown:
        raise Unsupported(f"container {container['name']}: fields {sorted(unknown)}")
    env = resolve_env(container, config_maps or {}, secrets or {})
    args = []
    policy = container.get("imagePullPolicy")
    if policy is not None:
        args += ["--pull", PULL_POLICIES[policy]]
    args += _security_args(pod_spec, container)
    args += _resource_args(container)
    args += _port_args(container, host_ports or {})
    args += _volume_args(pod_spec, container, host_paths or {})
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    if "workingDir" in container:
        args += ["--workdir", container["workingDir"]]
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    args += ["--stop-timeout", str(grace)]

    command = [expand(c, env) for c in container.get("command", [])]
    arguments = [expand(a, env) for a in container.get("args", [])]
    if command:
        # Like `command`, --entrypoint also drops the image's CMD.
        args += ["--entrypoint", command[0], container["image"], *command[1:]]
    else:
        args.append(container["image"])
    return args + arguments
