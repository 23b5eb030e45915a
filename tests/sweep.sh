#!/usr/bin/env bash
# lethe sweep (runtime/sweep.c): an experiment's plan as stage commands run by
# GNU parallel and by Slurm job arrays, on tests/lth/e2e_gaussian.lth (two
# seeds, three methods, four epochs: seconds per task).
#   - --dry-run lists every task in a valid order (a seed's poison, then its
#     train, then its unlearn tasks, then the finishing run) and writes nothing;
#   - the parallel sweep's folder equals `lethe run`'s: the same files, the
#     models and poison sets byte for byte, the records byte for byte but for
#     their wall-clock seconds;
#   - a second sweep runs nothing and changes nothing; a lost record and model
#     are redone alone;
#   - a folder holding another experiment's artifacts, or the same
#     experiment's with other epochs, is refused and left as it was;
#   - a failing task stops the sweep at its wave, naming the job log;
#   - Slurm: a single-node cluster (munge, slurmctld, slurmd) started here and
#     stopped afterwards runs the same sweep with the same result; where it
#     cannot start, SKIP with the reason.
# Prints PASS/FAIL/SKIP lines (tests/run.sh counts them).
set -u
B=${B:-build}
cd "$(dirname "$0")/.." || exit 2
root=$PWD
LETHE=$root/$B/lethe
exp=$root/tests/lth/e2e_gaussian.lth
work=$root/$B/tests/tmp/sweep.$$
slurm_dir=""
rm -rf "$work"
mkdir -p "$work"
export LETHE_CACHE=$work/cache

stop_slurm() {   # only the daemons this test started, by the pids they wrote
    [ -n "$slurm_dir" ] || return 0
    SLURM_CONF=$slurm_dir/slurm.conf scancel --user="$(id -un)" 2>/dev/null   # jobs left by a timed-out sweep
    for d in slurmd slurmctld munged; do
        pid=$(cat "$slurm_dir/$d.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
    done
    sleep 1
    for d in slurmd slurmctld munged; do
        pid=$(cat "$slurm_dir/$d.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    done
    rm -rf "$slurm_dir"
}
trap 'stop_slurm; rm -rf "$work"' EXIT
trap 'exit 143' TERM INT   # tests/run.sh's timeout: still stop the daemons

. tests/support/e2e.sh   # only for e2e_fmnist: the paths here are absolute (Slurm's jobs run elsewhere)
e2e_fmnist sweep
opts=(--methods retrain,gd,scrub --epochs 4 --quiet --no-plots $fallback)

# same_folder A B: the same files in records/ and seed*/ and the same
# results.jsonl, byte for byte but for "seconds" (wall-clock time)
same_folder() {
    python3 - "$1" "$2" <<'PY'
import os, re, sys
a, b = sys.argv[1:3]
def files(d):
    out = {"results.jsonl"}
    for sub in sorted(os.listdir(d)):
        if sub == "records" or sub.startswith("seed"):
            out |= {sub + "/" + f for f in os.listdir(os.path.join(d, sub))}
    return out
def text(d, f):
    data = open(os.path.join(d, f), "rb").read()
    return re.sub(rb'"seconds": ?[-0-9.eE+]+', b'"seconds":_', data) if f.endswith((".json", ".jsonl")) else data
fa, fb = files(a), files(b)
bad = sorted(fa ^ fb) + [f for f in sorted(fa & fb) if text(a, f) != text(b, f)]
print("ok" if not bad else "differ: " + " ".join(bad[:8]))
PY
}
snapshot() { (cd "$1" && find . -type f -printf '%p %s %T@\n' | sort && find . -type f -exec md5sum {} + | sort); }

# the reference: lethe run
if ! "$LETHE" run "$exp" --out "$work/run" "${opts[@]}" > "$work/run.log" 2>&1; then
    echo "FAIL sweep.reference_run: lethe run failed:"; sed 's/^/    /' "$work/run.log"; exit 1
fi

# --dry-run: the tasks in a valid order, nothing written
"$LETHE" sweep "$exp" --engine parallel -j 2 --out "$work/p" --dry-run "${opts[@]}" > "$work/dry.txt" 2> "$work/dry.err"
rc=$?
order=$(python3 - "$work/dry.txt" <<'PY'
import re, sys
tasks = [l.split(" || ")[-1] for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
def pos(pred):
    return [i for i, t in enumerate(tasks) if pred(t)]
bad = []
for k in (0, 1):
    seed = lambda t: re.search(r"--seed %d( |$)" % k, t)
    p, t, u = (pos(lambda x, s=s: re.search(r"lethe %s " % s, x) and seed(x)) for s in ("poison", "train", "unlearn"))
    if len(p) != 1 or len(t) != 1 or len(u) != 3:
        bad.append(f"seed {k}: {len(p)} poison, {len(t)} train, {len(u)} unlearn tasks (expected 1, 1, 3)")
    elif not p[0] < t[0] < min(u):
        bad.append(f"seed {k}: poison at {p[0]}, train at {t[0]}, unlearn from {min(u)}")
fin = pos(lambda x: re.search(r"lethe run ", x))
if len(fin) != 1 or fin[0] != len(tasks) - 1:
    bad.append(f"the finishing run is not the one last task: {fin} of {len(tasks)}")
print("ok" if not bad else "; ".join(bad))
PY
)
[ $rc -eq 0 ] && [ "$order" = ok ] && [ ! -e "$work/p" ] && echo "PASS sweep.dry_run_order" ||
    echo "FAIL sweep.dry_run_order: rc $rc, order: $order, folder written: $([ -e "$work/p" ] && echo yes || echo no) $(cat "$work/dry.err")"

# --dry-run for Slurm: a valid shell script whose job arrays depend on each other in order
"$LETHE" sweep "$exp" --engine slurm -j 2 --out "$work/p" --dry-run "${opts[@]}" > "$work/dry.sh" 2> "$work/dry.err"
rc=$?
deps=$(grep -o '^[a-z]*=$(sbatch .*' "$work/dry.sh" | sed -E 's/^([a-z]*)=.*--array=([^ ]*).*afterok:\$([a-z]*).*/\1:\2:\3/; s/^([a-z]*)=.*--array=([^ ]*) .*/\1:\2/' | tr '\n' ' ')
[ $rc -eq 0 ] && bash -n "$work/dry.sh" && [ "$deps" = "poison:0-1 train:0-1:poison unlearn:0-5%2:train finish:0-0:unlearn " ] &&
    [ ! -e "$work/p" ] && echo "PASS sweep.slurm_dry_run_script" ||
    echo "FAIL sweep.slurm_dry_run_script: rc $rc, arrays and dependencies: $deps $(cat "$work/dry.err")"

if ! command -v parallel > /dev/null; then
    echo "SKIP sweep.parallel: GNU parallel is not installed (Debian package parallel; make deps installs it)"
else
    # the parallel sweep equals lethe run
    "$LETHE" sweep "$exp" --engine parallel -j 2 --out "$work/p" "${opts[@]}" > "$work/p.log" 2>&1
    rc=$?
    verdict=$(same_folder "$work/run" "$work/p")
    [ $rc -eq 0 ] && [ "$verdict" = ok ] && [ -s "$work/p/sweep/unlearn.joblog" ] && grep -q '"descriptor_sha256"' "$work/p/sweep.json" &&
        echo "PASS sweep.parallel_equals_run" ||
        { echo "FAIL sweep.parallel_equals_run: rc $rc, folders: $verdict"; sed 's/^/    /' "$work/p.log" | tail -20; }

    # a second sweep runs nothing and changes nothing
    before=$(snapshot "$work/p")
    "$LETHE" sweep "$exp" --engine parallel -j 2 --out "$work/p" "${opts[@]}" > "$work/p2.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] && grep -q "nothing to run" "$work/p2.log" && [ "$before" = "$(snapshot "$work/p")" ] &&
        echo "PASS sweep.second_sweep_does_nothing" ||
        echo "FAIL sweep.second_sweep_does_nothing: rc $rc: $(cat "$work/p2.log")"

    # a lost model and record: only that task runs again (and the finishing run)
    rm -f "$work/p/seed1/gd_b10.safetensors" "$work/p/records/gd_b10_seed1.json"
    "$LETHE" sweep "$exp" --engine parallel -j 2 --out "$work/p" "${opts[@]}" > "$work/p3.log" 2>&1
    rc=$?
    n=$(grep -c . "$work/p/sweep/unlearn.tasks")
    verdict=$(same_folder "$work/run" "$work/p")
    [ $rc -eq 0 ] && [ "$n" -eq 1 ] && grep -q "gd_b10_seed1" "$work/p/sweep/unlearn.tasks" && [ "$verdict" = ok ] &&
        echo "PASS sweep.redoes_only_what_is_missing" ||
        echo "FAIL sweep.redoes_only_what_is_missing: rc $rc, $n unlearn tasks, folders: $verdict"

    # a failing task stops the sweep at its wave
    "$LETHE" sweep "$exp" --engine parallel -j 2 --out "$work/bad" --methods gd --epochs 4 --quiet \
        --data-dir "$work/no-such-data" > "$work/bad.log" 2>&1
    rc=$?
    [ $rc -eq 1 ] && grep -q "sweep wave poison failed" "$work/bad.log" && grep -q "poison.joblog" "$work/bad.log" &&
        [ ! -e "$work/bad/sweep/train.joblog" ] && echo "PASS sweep.failure_stops_the_sweep" ||
        echo "FAIL sweep.failure_stops_the_sweep: rc $rc: $(tail -5 "$work/bad.log")"
fi

# folders holding other artifacts are refused and left as they were
refused() {   # name, folder, expected message, extra options...
    local name=$1 dir=$2 msg=$3; shift 3
    local before; before=$(snapshot "$dir")
    "$LETHE" sweep "$exp" --engine parallel --out "$dir" "${opts[@]}" "$@" > "$work/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 1 ] && grep -q "$msg" "$work/$name.log" && [ "$before" = "$(snapshot "$dir")" ] &&
        echo "PASS sweep.$name" || echo "FAIL sweep.$name: rc $rc: $(cat "$work/$name.log")"
}
cp -r "$work/run" "$work/f1"   # lethe run's folder of another experiment (no sweep.json)
sed -i 's/"experiment": *"e2e_gaussian"/"experiment":"another_experiment"/' "$work/f1/records/gd_b10_seed1.json"
refused foreign_run_folder "$work/f1" "holds another experiment's artifacts"
cp -r "$work/run" "$work/f2"   # a sweep's folder of another experiment
printf '{"experiment":"another_experiment","descriptor_sha256":"%064d","epochs":4,"train_limit":0,"test_limit":0}' 0 \
    > "$work/f2/sweep.json"
refused foreign_sweep_folder "$work/f2" "holds another experiment's artifacts"
refused other_epochs "$work/run" "run with epochs = 4" --epochs 3

# Slurm: a single-node cluster on this machine
start_slurm() {   # returns 0 when the cluster is up, else prints the reason
    [ "$(id -u)" = 0 ] || { echo "not root (slurmd runs jobs as their user and needs root)"; return 1; }
    for c in munged slurmctld slurmd sbatch sinfo; do
        command -v $c > /dev/null || { echo "$c is missing (Debian packages slurm-wlm and munge; make deps installs them)"; return 1; }
    done
    slurm_dir=$(mktemp -d /tmp/lethe-slurm.XXXXXX)   # short: the munge socket's path has a length limit
    local s=$slurm_dir host ports
    host=$(hostname -s)
    ports=$(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for x in ss: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in ss))')
    mkdir -p "$s/state" "$s/spool"
    head -c 1024 /dev/urandom > "$s/munge.key" && chmod 600 "$s/munge.key"
    munged -f --socket="$s/munge.sock" --key-file="$s/munge.key" --log-file="$s/munged.log" \
        --pid-file="$s/munged.pid" --seed-file="$s/munged.seed" 2> "$s/munged.err" ||
        { echo "munged does not start: $(cat "$s/munged.err" "$s/munged.log" 2>/dev/null | tail -2)"; return 1; }
    cat > "$s/slurm.conf" <<EOF
ClusterName=lethetest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${ports% *}
SlurmdPort=${ports#* }
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$s/munge.sock
StateSaveLocation=$s/state
SlurmdSpoolDir=$s/spool
SlurmctldPidFile=$s/slurmctld.pid
SlurmdPidFile=$s/slurmd.pid
SlurmctldLogFile=$s/slurmctld.log
SlurmdLogFile=$s/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=lethetest Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$s/slurm.conf
    slurmctld -f "$s/slurm.conf" 2> "$s/slurmctld.err" || { echo "slurmctld does not start: $(tail -2 "$s/slurmctld.err" "$s/slurmctld.log" 2>/dev/null)"; return 1; }
    slurmd -f "$s/slurm.conf" 2> "$s/slurmd.err" || { echo "slurmd does not start: $(tail -2 "$s/slurmd.err" "$s/slurmd.log" 2>/dev/null)"; return 1; }
    for _ in $(seq 1 40); do
        [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && return 0
        sleep 0.5
    done
    echo "the node did not come up: $(sinfo -h 2>&1 | head -1); $(tail -2 "$s/slurmd.log" 2>/dev/null)"
    return 1
}
# (called with a redirection, not in $(...): the cleanup needs slurm_dir)
if start_slurm > "$work/slurm.reason"; then
    timeout 300 "$LETHE" sweep "$exp" --engine slurm -j 2 --wait --out "$work/sl" "${opts[@]}" > "$work/sl.log" 2>&1
    rc=$?
    verdict=$(same_folder "$work/run" "$work/sl")
    [ $rc -eq 0 ] && [ "$verdict" = ok ] && grep -q "^finish: Slurm job .*ended" "$work/sl.log" &&
        echo "PASS sweep.slurm_equals_run" ||
        { echo "FAIL sweep.slurm_equals_run: rc $rc, folders: $verdict"; tail -5 "$work/sl.log" "$work"/sl/sweep/logs/* 2>/dev/null | sed 's/^/    /'; }
    # a failing task: the later waves are cancelled, and the sweep says so
    timeout 120 "$LETHE" sweep "$exp" --engine slurm --wait --out "$work/slbad" --methods gd --epochs 4 --quiet \
        --data-dir "$work/no-such-data" > "$work/slbad.log" 2>&1
    rc=$?
    [ $rc -eq 1 ] && grep -q "tasks undone (poison first)" "$work/slbad.log" && [ -s "$work/slbad/sweep/logs/poison-0.out" ] &&
        [ ! -e "$work/slbad/sweep/logs/train-0.out" ] && echo "PASS sweep.slurm_failure_stops_the_sweep" ||
        echo "FAIL sweep.slurm_failure_stops_the_sweep: rc $rc: $(tail -3 "$work/slbad.log")"
else
    echo "SKIP sweep.slurm: $(cat "$work/slurm.reason")"
fi
