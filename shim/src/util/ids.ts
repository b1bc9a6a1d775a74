// The ids we accept from containerd (task, exec and CRI sandbox ids): they end up in socket
// names, guest paths and log lines, so they are kept short and free of separators.
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
