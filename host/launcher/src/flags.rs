//! containerd's Go-style shim flags, parsed exactly as shim/src/launcher/flags.ts does. Anything
//! that module would reject is `None` here: the Node.js shim then says what was wrong.

#[derive(Debug, Default, PartialEq)]
pub struct Invocation {
    pub namespace: String,
    pub address: String,
    pub id: String,
    pub action: Option<String>,
    /// -v: the Node.js shim prints its version.
    pub version: bool,
    /// -info: accepted by flags.ts; left to the Node.js shim too.
    pub info: bool,
}

pub fn parse(argv: &[String]) -> Option<Invocation> {
    let mut inv = Invocation::default();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if !arg.starts_with('-') {
            if inv.action.is_some() {
                return None;
            }
            inv.action = Some(arg.clone());
            continue;
        }
        let body = arg.strip_prefix("--").unwrap_or(&arg[1..]);
        let (name, inline) = match body.find('=') {
            Some(eq) => (&body[..eq], Some(&body[eq + 1..])),
            None => (body, None),
        };
        match name {
            "debug" => {}
            // As flags.ts: bare is true, `=true`/`=1` true, any other value false; the last wins.
            "v" => inv.version = inline.is_none_or(|v| v == "true" || v == "1"),
            "info" => inv.info = inline.is_none_or(|v| v == "true" || v == "1"),
            "namespace" | "address" | "publish-binary" | "id" | "bundle" | "socket" => {
                let value = match inline {
                    Some(v) => v.to_string(),
                    None => {
                        let v = argv.get(i)?.clone();
                        i += 1;
                        v
                    }
                };
                match name {
                    "namespace" => inv.namespace = value,
                    "address" => inv.address = value,
                    "id" => inv.id = value,
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn containerd_start() {
        let inv = parse(&args(
            "-namespace k8s.io -address /run/c.sock -publish-binary /bin/c -id x1 start",
        ))
        .unwrap();
        assert_eq!(inv.namespace, "k8s.io");
        assert_eq!(inv.address, "/run/c.sock");
        assert_eq!(inv.id, "x1");
        assert_eq!(inv.action.as_deref(), Some("start"));
        assert!(!inv.version && !inv.info);
    }

    #[test]
    fn forms_and_rejections() {
        let inv = parse(&args("--namespace=a -debug --id=b=c delete")).unwrap();
        assert_eq!((inv.namespace.as_str(), inv.id.as_str()), ("a", "b=c"));
        assert!(parse(&args("-v")).unwrap().version);
        assert!(!parse(&args("-v -v=false start")).unwrap().version);
        assert_eq!(parse(&args("-bogus start")), None);
        assert_eq!(parse(&args("start delete")), None);
        assert_eq!(parse(&args("-namespace")), None);
        assert_eq!(parse(&args("- start")), None);
    }
}
