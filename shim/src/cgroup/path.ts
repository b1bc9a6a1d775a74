// A pod's cgroup as the OCI spec names it (`linux.cgroupsPath`), in either form containerd's
// CRI writes: a cgroupfs path (`/kubepods/besteffort/pod<uid>/<id>`) or systemd's
// `slice:prefix:name` (`kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`), resolved to
// the directory under each hierarchy's root, as runc resolves them. The path also tells the
// pod's QoS class: kubelet names its cgroups after it.
import { posix } from "node:path";
import { invalid } from "../errors.js";

export type CgroupDriver = "cgroupfs" | "systemd";

export interface PodCgroupPath {
  driver: CgroupDriver;
  /** Absolute, relative to each hierarchy's mount point (e.g. /kubepods/burstable/pod1/abc). */
  path: string;
}

const SYSTEMD_FORM = /^([^:/]*):([^:/]*):([^:/]+)$/;

/** Resolves `linux.cgroupsPath`; a path that could escape the hierarchy is refused. */
export function resolveCgroupsPath(cgroupsPath: string): PodCgroupPath {
  const systemd = SYSTEMD_FORM.exec(cgroupsPath);
  if (systemd) {
    const [, slice = "", prefix = "", name = ""] = systemd;
    // runc: an empty slice is system.slice; the unit is a scope named prefix-name.
    const unit = name.endsWith(".slice") ? name : `${prefix ? `${prefix}-` : ""}${name}.scope`;
    checkUnitName(cgroupsPath, unit);
    return { driver: "systemd", path: posix.join(expandSlice(cgroupsPath, slice || "system.slice"), unit) };
  }
  if (cgroupsPath.includes(":")) {
    throw invalid(
      `linux.cgroupsPath "${cgroupsPath}" is neither a cgroupfs path nor systemd's slice:prefix:name`,
    );
  }
  const segments = cgroupsPath.split("/").filter((s) => s !== "" && s !== ".");
  if (segments.length === 0 || segments.includes("..")) {
    throw invalid(`linux.cgroupsPath "${cgroupsPath}" must name a cgroup below the root, without ".."`);
  }
  return { driver: "cgroupfs", path: `/${segments.join("/")}` };
}

/** systemd's slice nesting: a-b-c.slice lives at /a.slice/a-b.slice/a-b-c.slice ("-.slice" is the root). */
export function expandSlice(cgroupsPath: string, slice: string): string {
  if (slice === "-.slice") return "/";
  const base = slice.endsWith(".slice") ? slice.slice(0, -".slice".length) : "";
  if (!base || base.startsWith("-") || base.endsWith("-") || base.includes("--")) {
    throw invalid(`linux.cgroupsPath "${cgroupsPath}": "${slice}" is not a valid systemd slice name`);
  }
  checkUnitName(cgroupsPath, slice);
  const parts = base.split("-");
  return `/${parts.map((_, i) => `${parts.slice(0, i + 1).join("-")}.slice`).join("/")}`;
}

function checkUnitName(cgroupsPath: string, unit: string): void {
  if (!/^[A-Za-z0-9:_.\\@-]+$/.test(unit) || unit.startsWith(".")) {
    throw invalid(`linux.cgroupsPath "${cgroupsPath}": "${unit}" is not a valid systemd unit name`);
  }
}

export type PodQos = "Guaranteed" | "Burstable" | "BestEffort";

/**
 * The pod's QoS class from kubelet's cgroup naming (both drivers): kubepods/besteffort/pod<uid>,
 * kubepods/burstable/pod<uid>, kubepods/pod<uid> (Guaranteed); undefined for any other path.
 */
export function qosOf(resolved: string): PodQos | undefined {
  const segments = resolved.split("/").filter(Boolean);
  const root = segments.findIndex((s) => s === "kubepods" || s.endsWith("kubepods.slice"));
  if (root < 0) return undefined;
  const next = (segments[root + 1] ?? "").replace(/\.slice$/, "");
  const tail = next.replace(/^.*kubepods-/, "");
  if (tail === "besteffort" || next === "besteffort") return "BestEffort";
  if (tail === "burstable" || next === "burstable") return "Burstable";
  if (/^pod[A-Za-z0-9_-]+$/.test(tail) || /^pod[A-Za-z0-9_-]+$/.test(next)) return "Guaranteed";
  return undefined;
}
