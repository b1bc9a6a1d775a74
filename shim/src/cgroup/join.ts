// How the VMM enters the pod's cgroup before it runs any guest code: the drivers spawn it
// through `sh -c`, which writes its own pid ($$) to each hierarchy's cgroup.procs and then
// execs the rest of the command line (nsenter → setpriv → VMM keep that pid). Writing the pid
// after spawn instead would let the VMM allocate guest memory charged to the daemon's cgroup
// first (memory charges do not move with the process in v2).
const JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"';

/** The argv prefix that joins `procs` (cgroup.procs files) and execs what follows; none if empty. */
export function cgroupJoinArgv(procs: readonly string[] | undefined): string[] {
  if (!procs?.length) return [];
  return ["/bin/sh", "-c", JOIN_SCRIPT, "cloudhv-cgroup-join", ...procs, "--"];
}
