//! Reference parsing follows Docker (github.com/distribution/reference,
//! `ParseNormalizedNamed`): normalization table and error table.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use supermachine_oci::{Error, Reference, ReferenceError, Source};

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// (input, registry, repository, tag, canonical, familiar)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
);

#[test]
fn normalizes_like_docker() {
    let cases: &[Case] = &[
        (
            "alpine",
            "docker.io",
            "library/alpine",
            Some("latest"),
            "docker.io/library/alpine:latest",
            "alpine:latest",
        ),
        (
            "alpine:3.20",
            "docker.io",
            "library/alpine",
            Some("3.20"),
            "docker.io/library/alpine:3.20",
            "alpine:3.20",
        ),
        (
            "library/alpine",
            "docker.io",
            "library/alpine",
            Some("latest"),
            "docker.io/library/alpine:latest",
            "alpine:latest",
        ),
        (
            "docker.io/library/alpine:latest",
            "docker.io",
            "library/alpine",
            Some("latest"),
            "docker.io/library/alpine:latest",
            "alpine:latest",
        ),
        (
            "docker.io/alpine",
            "docker.io",
            "library/alpine",
            Some("latest"),
            "docker.io/library/alpine:latest",
            "alpine:latest",
        ),
        (
            "index.docker.io/library/alpine",
            "docker.io",
            "library/alpine",
            Some("latest"),
            "docker.io/library/alpine:latest",
            "alpine:latest",
        ),
        (
            "user/app",
            "docker.io",
            "user/app",
            Some("latest"),
            "docker.io/user/app:latest",
            "user/app:latest",
        ),
        (
            "localhost:5000/team/app:v1",
            "localhost:5000",
            "team/app",
            Some("v1"),
            "localhost:5000/team/app:v1",
            "localhost:5000/team/app:v1",
        ),
        (
            "localhost/app",
            "localhost",
            "app",
            Some("latest"),
            "localhost/app:latest",
            "localhost/app:latest",
        ),
        (
            "127.0.0.1:5000/x",
            "127.0.0.1:5000",
            "x",
            Some("latest"),
            "127.0.0.1:5000/x:latest",
            "127.0.0.1:5000/x:latest",
        ),
        (
            "[::1]:5000/x:y",
            "[::1]:5000",
            "x",
            Some("y"),
            "[::1]:5000/x:y",
            "[::1]:5000/x:y",
        ),
        (
            "quay.io/org/sub/app:1.0-rc.1",
            "quay.io",
            "org/sub/app",
            Some("1.0-rc.1"),
            "quay.io/org/sub/app:1.0-rc.1",
            "quay.io/org/sub/app:1.0-rc.1",
        ),
        (
            "Example.COM/app",
            "Example.COM",
            "app",
            Some("latest"),
            "Example.COM/app:latest",
            "Example.COM/app:latest",
        ),
        (
            "Foo/bar",
            "Foo",
            "bar",
            Some("latest"),
            "Foo/bar:latest",
            "Foo/bar:latest",
        ),
        // "localhost:5000" alone is a repository named localhost with tag 5000.
        (
            "localhost:5000",
            "docker.io",
            "library/localhost",
            Some("5000"),
            "docker.io/library/localhost:5000",
            "localhost:5000",
        ),
        (
            "a/b-c_d__e---f.g",
            "docker.io",
            "a/b-c_d__e---f.g",
            Some("latest"),
            "docker.io/a/b-c_d__e---f.g:latest",
            "a/b-c_d__e---f.g:latest",
        ),
        (
            "docker.io/library/a/b",
            "docker.io",
            "library/a/b",
            Some("latest"),
            "docker.io/library/a/b:latest",
            "library/a/b:latest",
        ),
        (
            "ubuntu:_tag",
            "docker.io",
            "library/ubuntu",
            Some("_tag"),
            "docker.io/library/ubuntu:_tag",
            "ubuntu:_tag",
        ),
        (
            "ubuntu:Mixed.Case-1",
            "docker.io",
            "library/ubuntu",
            Some("Mixed.Case-1"),
            "docker.io/library/ubuntu:Mixed.Case-1",
            "ubuntu:Mixed.Case-1",
        ),
    ];
    for (input, registry, repository, tag, canonical, familiar) in cases {
        let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.registry(), *registry, "{input}");
        assert_eq!(r.repository(), *repository, "{input}");
        assert_eq!(r.tag(), *tag, "{input}");
        assert!(r.digest().is_none(), "{input}");
        assert_eq!(r.to_string(), *canonical, "{input}");
        assert_eq!(r.familiar(), *familiar, "{input}");
        // Canonical forms are fixed points.
        assert_eq!(Reference::parse(canonical).unwrap(), r, "{input}");
    }
}

#[test]
fn digests_with_and_without_tag() {
    let r = Reference::parse(&format!("alpine@{D}")).unwrap();
    assert_eq!(r.tag(), None);
    assert_eq!(r.digest().unwrap().as_str(), D);
    assert_eq!(r.to_string(), format!("docker.io/library/alpine@{D}"));
    assert_eq!(r.tag_or_digest(), D);

    let r = Reference::parse(&format!("localhost:5000/app:v1@{D}")).unwrap();
    assert_eq!(
        (r.registry(), r.repository(), r.tag()),
        ("localhost:5000", "app", Some("v1"))
    );
    assert_eq!(r.tag_or_digest(), D, "the digest decides what is pulled");
    assert_eq!(r.to_string(), format!("localhost:5000/app:v1@{D}"));
}

#[test]
fn rejects_what_docker_rejects() {
    use ReferenceError::*;
    // The limit applies to the normalized "registry/repository".
    let long_repo = format!("u/{}", "a".repeat(244)); // docker.io/u/ + 244 = 256
    let ok_repo = format!("u/{}", "a".repeat(243));
    assert!(Reference::parse(&ok_repo).is_ok());
    let long_tag = format!("alpine:{}", "t".repeat(129));
    let cases: Vec<(String, ReferenceError)> = vec![
        ("".into(), Empty),
        ("Alpine".into(), NameContainsUppercase),
        ("docker.io/Library/alpine".into(), NameContainsUppercase),
        ("localhost:5000/Team/app".into(), NameContainsUppercase),
        (long_repo, NameTooLong(256)),
        (long_tag, InvalidTag),
        ("alpine:".into(), InvalidTag),
        ("alpine:-x".into(), InvalidTag),
        ("alpine:.x".into(), InvalidTag),
        ("alpine:a+b".into(), InvalidTag),
        (":latest".into(), InvalidFormat),
        ("/alpine".into(), InvalidFormat),
        ("alpine/".into(), InvalidFormat),
        ("a//b".into(), InvalidFormat),
        ("-alpine".into(), InvalidFormat),
        ("alpine-".into(), InvalidFormat),
        ("a..b".into(), InvalidFormat),
        ("a___b".into(), InvalidFormat),
        ("a._b".into(), InvalidFormat),
        ("a b".into(), InvalidFormat),
        (
            "alpine@sha256:abc".into(),
            Digest(supermachine_oci::DigestError::InvalidLength {
                algorithm: "sha256".into(),
                expected: 64,
            }),
        ),
        (
            format!("alpine@{}", D.to_uppercase().replace("SHA", "sha")),
            Digest(supermachine_oci::DigestError::InvalidFormat),
        ),
        (
            "alpine@sha256".into(),
            Digest(supermachine_oci::DigestError::InvalidFormat),
        ),
        (
            format!("alpine@md5:{}", "a".repeat(32)),
            Digest(supermachine_oci::DigestError::Unsupported("md5".into())),
        ),
        (format!("alpine@{D}@{D}"), InvalidFormat),
        (
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            HexIdentifier,
        ),
        ("-host.com/app".into(), InvalidRegistry("-host.com".into())),
        (
            "host.com:port/app".into(),
            InvalidRegistry("host.com:port".into()),
        ),
        (
            "[zz::1]:5000/app".into(),
            InvalidRegistry("[zz::1]:5000".into()),
        ),
        (
            "host_name.com/app".into(),
            InvalidRegistry("host_name.com".into()),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(Reference::parse(&input), Err(want.clone()), "{input:?}");
    }
    // Errors say what is wrong in Docker's words.
    assert_eq!(
        Reference::parse("Alpine").unwrap_err().to_string(),
        "invalid reference format: repository name must be lowercase"
    );
}

#[test]
fn sources() {
    let r = Source::parse("alpine").unwrap();
    assert_eq!(r.key(), "docker.io/library/alpine:latest");

    let s = Source::parse("oci:/srv/layout:v2").unwrap();
    assert_eq!(
        s,
        Source::OciLayout {
            path: PathBuf::from("/srv/layout"),
            tag: Some("v2".into())
        }
    );
    assert_eq!(s.key(), "oci:/srv/layout:v2");
    assert_eq!(
        Source::parse("oci:/srv/layout").unwrap(),
        Source::OciLayout {
            path: "/srv/layout".into(),
            tag: None
        }
    );
    let rel = Source::parse("oci:layout").unwrap();
    assert_eq!(
        rel,
        Source::OciLayout {
            path: std::env::current_dir().unwrap().join("layout"),
            tag: None
        }
    );

    let s = Source::parse("docker-archive:/tmp/img.tar:team/app:v1").unwrap();
    assert_eq!(
        s,
        Source::DockerArchive {
            path: "/tmp/img.tar".into(),
            reference: Some("team/app:v1".into())
        }
    );
    assert_eq!(s.key(), "docker-archive:/tmp/img.tar:team/app:v1");

    // Plain paths: a directory is a layout, a file an archive.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.tar");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        Source::parse(dir.path().to_str().unwrap()).unwrap(),
        Source::OciLayout { .. }
    ));
    assert!(matches!(
        Source::parse(file.to_str().unwrap()).unwrap(),
        Source::DockerArchive { .. }
    ));
    assert!(matches!(
        Source::parse("/definitely/not/here"),
        Err(Error::InvalidSource { .. })
    ));

    for bad in [
        "oci:",
        "oci:/x:",
        "docker-archive:",
        "docker-archive:/x.tar:",
    ] {
        assert!(
            matches!(Source::parse(bad), Err(Error::InvalidSource { .. })),
            "{bad}"
        );
    }
    let e = Source::parse("Alpine:1").unwrap_err();
    assert!(matches!(e, Error::InvalidReference { .. }));
    assert!(e.to_string().contains("\"Alpine:1\""), "{e}");
}
