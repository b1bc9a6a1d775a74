// A CNI bridge network for a private containerd: one bridge and one /24 per caller, so that
// harnesses and pretend nodes running at once never collide. Pods get a veth on it.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { exec } from "@cloudhv/shim";

export interface BridgeNetwork {
  bridge: string;
  /** The bridge's address: the pods' default gateway. */
  gateway: string;
  /** With `dualStack`: the bridge's IPv6 address, the pods' IPv6 default gateway. */
  gateway6?: string;
  /** Deletes the bridge (the pods' netns and veths go with StopPodSandbox). */
  remove(): Promise<void>;
}

/**
 * Writes `10-cloudhv.conflist` (bridge + host-local) into `confDir`; `stateDir` holds the
 * IPAM leases and `tag` (a few letters unique to the caller) names the bridge.
 */
export async function writeBridgeNetwork(
  confDir: string,
  stateDir: string,
  tag: string,
  /** Also an IPv6 range (a ULA /64, the same third number as the IPv4 /24) and route. */
  dualStack = false,
): Promise<BridgeNetwork> {
  const bridge = `chv${tag
    .replace(/[^a-zA-Z0-9]/g, "")
    .slice(-6)
    .toLowerCase()}`.slice(0, 15);
  const n = Math.floor(Math.random() * 250) + 1;
  const subnet = `10.88.${n}`;
  const subnet6 = `fd00:88:${n.toString(16)}::`;
  await writeFile(
    path.join(confDir, "10-cloudhv.conflist"),
    JSON.stringify({
      cniVersion: "0.4.0",
      name: "cloudhv-harness",
      plugins: [
        {
          type: "bridge",
          bridge,
          isGateway: true,
          ipMasq: false,
          ipam: {
            type: "host-local",
            ranges: [
              [{ subnet: `${subnet}.0/24`, gateway: `${subnet}.1` }],
              ...(dualStack ? [[{ subnet: `${subnet6}/64`, gateway: `${subnet6}1` }]] : []),
            ],
            routes: [{ dst: "0.0.0.0/0" }, ...(dualStack ? [{ dst: "::/0" }] : [])],
            dataDir: path.join(stateDir, "cni-ipam"),
          },
        },
      ],
    }),
  );
  return {
    bridge,
    gateway: `${subnet}.1`,
    ...(dualStack ? { gateway6: `${subnet6}1` } : {}),
    remove: async () => {
      await exec(["ip", "link", "del", bridge]);
    },
  };
}
