//! The EC2 Serial Console's SSH endpoints and their published host-key
//! fingerprints, per region.
//!
//! Source: the Amazon EC2 User Guide, "Connect to the EC2 Serial Console",
//! section "EC2 Serial Console endpoints and fingerprints". Older regions
//! use `serial-console.ec2-instance-connect.<region>.aws`, newer ones
//! `ec2-serial-console.<region>.api.aws`, China
//! `ec2-serial-console.<region>.api.amazonwebservices.com.cn`, GovCloud
//! `serial-console.ec2-instance-connect.<region>.amazonaws.com`. A region
//! missing here is refused unless the user pins a fingerprint themselves.

use crate::error::Failure;
use crate::hostkeys::is_sha256_fingerprint;

/// (region, SSH host, SHA-256 host-key fingerprint), as AWS publishes them.
#[rustfmt::skip]
pub const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("us-east-1", "serial-console.ec2-instance-connect.us-east-1.aws", "SHA256:dXwn5ma/xadVMeBZGEru5l2gx+yI5LDiJaLUcz0FMmw"),
    ("us-east-2", "serial-console.ec2-instance-connect.us-east-2.aws", "SHA256:EhwPkTzRtTY7TRSzz26XbB0/HvV9jRM7mCZN0xw/d/0"),
    ("us-west-1", "serial-console.ec2-instance-connect.us-west-1.aws", "SHA256:OHldlcMET8u7QLSX3jmRTRAPFHVtqbyoLZBMUCqiH3Y"),
    ("us-west-2", "serial-console.ec2-instance-connect.us-west-2.aws", "SHA256:EMCIe23TqKaBI6yGHainqZcMwqNkDhhAVHa1O2JxVUc"),
    ("af-south-1", "ec2-serial-console.af-south-1.api.aws", "SHA256:RMWWZ2fVePeJUqzjO5jL2KIgXsczoHlz21Ed00biiWI"),
    ("ap-east-1", "ec2-serial-console.ap-east-1.api.aws", "SHA256:T0Q1lpiXxChoZHplnAkjbP7tkm2xXViC9bJFsjYnifk"),
    ("ap-east-2", "ec2-serial-console.ap-east-2.api.aws", "SHA256:z1rsF5DE8aQqsHwBr/D40tR2GnyMqnScCUa1z1eFwDQ"),
    ("ap-south-1", "serial-console.ec2-instance-connect.ap-south-1.aws", "SHA256:oBLXcYmklqHHEbliARxEgH8IsO51rezTPiSM35BsU40"),
    ("ap-south-2", "ec2-serial-console.ap-south-2.api.aws", "SHA256:WJgPBSwV4/shN+OPITValoewAuYj15DVW845JEhDKRs"),
    ("ap-southeast-1", "serial-console.ec2-instance-connect.ap-southeast-1.aws", "SHA256:PLFNn7WnCQDHx3qmwLu1Gy/O8TUX7LQgZuaC6L45CoY"),
    ("ap-southeast-2", "serial-console.ec2-instance-connect.ap-southeast-2.aws", "SHA256:yFvMwUK9lEUQjQTRoXXzuN+cW9/VSe9W984Cf5Tgzo4"),
    ("ap-southeast-3", "ec2-serial-console.ap-southeast-3.api.aws", "SHA256:5ZwgrCh+lfns32XITqL/4O0zIfbx4bZgsYFqy3o8mIk"),
    ("ap-southeast-4", "ec2-serial-console.ap-southeast-4.api.aws", "SHA256:Avaq27hFgLvjn5gTSShZ0oV7h90p0GG46wfOeT6ZJvM"),
    ("ap-southeast-5", "ec2-serial-console.ap-southeast-5.api.aws", "SHA256:cQXTHQMRcqRdIjmAGoAMBSExeoRobYyRwT67yTjnEiA"),
    ("ap-southeast-6", "ec2-serial-console.ap-southeast-6.api.aws", "SHA256:wNltdH0gVfM5uHJKjrw+ElFuKoJgalcSKqjCS+lLkv4"),
    ("ap-southeast-7", "ec2-serial-console.ap-southeast-7.api.aws", "SHA256:KCAZiRYrR1Q2lqsg7vTwixWmvc2wmjVT31XRgSdEfDY"),
    ("ap-northeast-1", "serial-console.ec2-instance-connect.ap-northeast-1.aws", "SHA256:RQfsDCZTOfQawewTRDV1t9Em/HMrFQe+CRlIOT5um4k"),
    ("ap-northeast-2", "serial-console.ec2-instance-connect.ap-northeast-2.aws", "SHA256:FoqWXNX+DZ++GuNTztg9PK49WYMqBX+FrcZM2dSrqrI"),
    ("ap-northeast-3", "ec2-serial-console.ap-northeast-3.api.aws", "SHA256:Am0/jiBKBnBuFnHr9aXsgEV3G8Tu/vVHFXE/3UcyjsQ"),
    ("ca-central-1", "serial-console.ec2-instance-connect.ca-central-1.aws", "SHA256:P2O2jOZwmpMwkpO6YW738FIOTHdUTyEv2gczYMMO7s4"),
    ("ca-west-1", "ec2-serial-console.ca-west-1.api.aws", "SHA256:s3rc8lI2xhbhr3iedjJNxGAFLPGOLjx7IxxXrGckk6Q"),
    ("cn-north-1", "ec2-serial-console.cn-north-1.api.amazonwebservices.com.cn", "SHA256:2gHVFy4H7uU3+WaFUxD28v/ggMeqjvSlgngpgLgGT+Y"),
    ("cn-northwest-1", "ec2-serial-console.cn-northwest-1.api.amazonwebservices.com.cn", "SHA256:TdgrNZkiQOdVfYEBUhO4SzUA09VWI5rYOZGTogpwmiM"),
    ("eu-central-1", "serial-console.ec2-instance-connect.eu-central-1.aws", "SHA256:aCMFS/yIcOdOlkXvOl8AmZ1Toe+bBnrJJ3Fy0k0De2c"),
    ("eu-central-2", "ec2-serial-console.eu-central-2.api.aws", "SHA256:8Ppx2mBMf6WdCw0NUlzKfwM4/IfRz4OaXFutQXWp6mk"),
    ("eu-north-1", "serial-console.ec2-instance-connect.eu-north-1.aws", "SHA256:tkGFFUVUDvocDiGSS3Cu8Gdl6w2uI32EPNpKFKLwX84"),
    ("eu-south-1", "ec2-serial-console.eu-south-1.api.aws", "SHA256:lC0kOVJnpgFyBVrxn0A7n99ecLbXSX95cuuS7X7QK30"),
    ("eu-south-2", "ec2-serial-console.eu-south-2.api.aws", "SHA256:GoCW2DFRlu669QNxqFxEcsR6fZUz/4F4n7T45ZcwoEc"),
    ("eu-west-1", "serial-console.ec2-instance-connect.eu-west-1.aws", "SHA256:h2AaGAWO4Hathhtm6ezs3Bj7udgUxi2qTrHjZAwCW6E"),
    ("eu-west-2", "serial-console.ec2-instance-connect.eu-west-2.aws", "SHA256:a69rd5CE/AEG4Amm53I6lkD1ZPvS/BCV3tTPW2RnJg8"),
    ("eu-west-3", "serial-console.ec2-instance-connect.eu-west-3.aws", "SHA256:q8ldnAf9pymeNe8BnFVngY3RPAr/kxswJUzfrlxeEWs"),
    ("il-central-1", "ec2-serial-console.il-central-1.api.aws", "SHA256:JR6q8v6kNNPi8+QSFQ4dj5dimNmZPTgwgsM1SNvtYyU"),
    ("me-central-1", "ec2-serial-console.me-central-1.api.aws", "SHA256:zpb5duKiBZ+l0dFwPeyykB4MPBYhI/XzXNeFSDKBvLE"),
    ("me-south-1", "ec2-serial-console.me-south-1.api.aws", "SHA256:nPjLLKHu2QnLdUq2kVArsoK5xvPJOMRJKCBzCDqC3k8"),
    ("mx-central-1", "ec2-serial-console.mx-central-1.api.aws", "SHA256:BCuVl13iQNk+CcVnt18Ef4p2ZHUrBBAOxlFetB32GS0"),
    ("sa-east-1", "serial-console.ec2-instance-connect.sa-east-1.aws", "SHA256:rd2+/32Ognjew1yVIemENaQzC+Botbih62OqAPDq1dI"),
    ("us-gov-east-1", "serial-console.ec2-instance-connect.us-gov-east-1.amazonaws.com", "SHA256:tIwe19GWsoyLClrtvu38YEEh+DHIkqnDcZnmtebvF28"),
    ("us-gov-west-1", "serial-console.ec2-instance-connect.us-gov-west-1.amazonaws.com", "SHA256:kfOFRWLaOZfB+utbd3bRf8OlPf8nGO2YZLqXZiIw5DQ"),
];

/// Where to ssh for a region's serial console, and which key to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: Option<u16>,
    pub fingerprint: String,
    /// Whether the host or fingerprint came from an override rather than
    /// AWS's published table (said on stderr).
    pub overridden: bool,
}

/// The region's endpoint. `host_override` (`EIC_CONNECT_SERIAL_HOST`,
/// `HOST[:PORT]`, for tests) replaces the host; `fingerprint_override`
/// (`--host-key-fingerprint`) replaces the pin, and is required for a host
/// override or a region this table does not know. Never unpinned.
pub fn endpoint(
    region: &str,
    host_override: Option<&str>,
    fingerprint_override: Option<&str>,
) -> Result<Endpoint, Failure> {
    if let Some(fp) = fingerprint_override
        && !is_sha256_fingerprint(fp)
    {
        return Err(Failure::usage(format!(
            "{} is not a SHA256 host-key fingerprint",
            crate::sanitize::terminal_safe(fp)
        ))
        .hint("the form is SHA256: followed by 43 base64 characters, as ssh-keygen -l prints it"));
    }
    let known = ENDPOINTS.iter().find(|(r, _, _)| *r == region);
    if let Some(spec) = host_override {
        let (host, port) = split_host_port(spec)?;
        let fingerprint = fingerprint_override.ok_or_else(|| {
            Failure::usage("EIC_CONNECT_SERIAL_HOST is set but no fingerprint to pin for it")
                .hint("set EIC_CONNECT_SERIAL_FINGERPRINT (or --host-key-fingerprint) to that host's SHA256 fingerprint")
        })?;
        return Ok(Endpoint {
            host,
            port,
            fingerprint: fingerprint.to_owned(),
            overridden: true,
        });
    }
    match (known, fingerprint_override) {
        (Some((_, host, published)), fp) => Ok(Endpoint {
            host: (*host).to_owned(),
            port: None,
            fingerprint: fp.unwrap_or(published).to_owned(),
            overridden: fp.is_some_and(|fp| fp != *published),
        }),
        (None, Some(fp)) => Ok(Endpoint {
            host: default_host(region),
            port: None,
            fingerprint: fp.to_owned(),
            overridden: true,
        }),
        (None, None) => Err(Failure::new(format!(
            "eic-connect does not know the serial console's host key for region {}",
            crate::sanitize::terminal_safe(region)
        ))
        .hint("look the region up in the EC2 User Guide, \"Connect to the EC2 Serial Console\" (EC2 Serial Console endpoints and fingerprints)")
        .hint("then pin its fingerprint: eic-connect serial --host-key-fingerprint SHA256:… TARGET")),
    }
}

/// The host naming scheme of regions launched since 2021.
fn default_host(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("ec2-serial-console.{region}.api.amazonwebservices.com.cn")
    } else {
        format!("ec2-serial-console.{region}.api.aws")
    }
}

fn split_host_port(spec: &str) -> Result<(String, Option<u16>), Failure> {
    let bad = || {
        Failure::usage(format!(
            "EIC_CONNECT_SERIAL_HOST={} is not HOST or HOST:PORT",
            crate::sanitize::terminal_safe(spec)
        ))
    };
    let (host, port) = match spec.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
        _ => (spec, None),
    };
    if host.is_empty()
        || host.starts_with('-')
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_well_formed() {
        for (region, host, fp) in ENDPOINTS {
            assert!(is_sha256_fingerprint(fp), "{region}: {fp}");
            assert!(host.contains(region), "{region}: {host}");
            let expected_scheme = host.starts_with("serial-console.ec2-instance-connect.")
                || host.starts_with("ec2-serial-console.");
            assert!(expected_scheme, "{host}");
            if region.starts_with("cn-") {
                assert!(host.ends_with(".amazonwebservices.com.cn"));
            }
        }
        let mut regions: Vec<&str> = ENDPOINTS.iter().map(|e| e.0).collect();
        regions.sort();
        regions.dedup();
        assert_eq!(regions.len(), ENDPOINTS.len(), "duplicate region");
    }

    #[test]
    fn published_endpoints() {
        let e = endpoint("us-east-1", None, None).unwrap();
        assert_eq!(e.host, "serial-console.ec2-instance-connect.us-east-1.aws");
        assert_eq!(
            e.fingerprint,
            "SHA256:dXwn5ma/xadVMeBZGEru5l2gx+yI5LDiJaLUcz0FMmw"
        );
        assert!(!e.overridden);
        assert_eq!(
            endpoint("ap-southeast-3", None, None).unwrap().host,
            "ec2-serial-console.ap-southeast-3.api.aws"
        );
        assert_eq!(
            endpoint("cn-north-1", None, None).unwrap().host,
            "ec2-serial-console.cn-north-1.api.amazonwebservices.com.cn"
        );
    }

    #[test]
    fn unknown_regions_need_a_pinned_fingerprint() {
        let err = endpoint("xx-future-1", None, None).unwrap_err();
        assert!(err.message.contains("xx-future-1"));
        assert!(
            err.hints
                .iter()
                .any(|h| h.contains("--host-key-fingerprint"))
        );
        let fp = "SHA256:EhwPkTzRtTY7TRSzz26XbB0/HvV9jRM7mCZN0xw/d/0";
        let e = endpoint("xx-future-1", None, Some(fp)).unwrap();
        assert_eq!(e.host, "ec2-serial-console.xx-future-1.api.aws");
        assert!(e.overridden);
        assert_eq!(
            endpoint("cn-south-9", None, Some(fp)).unwrap().host,
            "ec2-serial-console.cn-south-9.api.amazonwebservices.com.cn"
        );
        assert_eq!(
            endpoint("us-east-1", None, Some("MD5:aa"))
                .unwrap_err()
                .exit,
            2
        );
    }

    #[test]
    fn host_overrides_are_always_pinned() {
        let fp = "SHA256:EhwPkTzRtTY7TRSzz26XbB0/HvV9jRM7mCZN0xw/d/0";
        let e = endpoint("us-east-1", Some("127.0.0.1:2222"), Some(fp)).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.overridden),
            ("127.0.0.1", Some(2222), true)
        );
        assert!(endpoint("us-east-1", Some("127.0.0.1:2222"), None).is_err());
        assert!(endpoint("us-east-1", Some("-oProxyCommand=x"), Some(fp)).is_err());
        assert!(endpoint("us-east-1", Some("host:notaport"), Some(fp)).is_err());
        assert_eq!(
            endpoint("us-east-1", Some("serial.example"), Some(fp))
                .unwrap()
                .port,
            None
        );
    }
}
