//! Pulling from registries (OCI distribution API) with `oci-client`:
//! endpoint order (mirrors, then the registry), auth, manifest resolution,
//! and streaming blobs into the store.
//!
//! oci-client is used for the HTTP and auth dance (bearer token challenge,
//! basic auth) but not for manifest interpretation: we fetch manifests raw
//! and parse them ourselves (`manifest.rs`) to cap sizes, check media types
//! and choose the platform with errors that name what was available.

use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::digest::Digest;
use crate::docker_config::{self, Credentials};
use crate::error::{Error, Result};
use crate::manifest::{self, Desc, Parsed, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::pull::{Fetcher, PullEvent, PullOptions, Resolved};
use crate::reference::{Reference, DOCKER_HUB};
use crate::registries::Endpoint;
use crate::store::{BlobWriter, Store};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle time allowed between reads of a response body.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const USER_AGENT: &str = concat!("supermachine/", env!("CARGO_PKG_VERSION"));

/// rustls needs a process-wide crypto provider; we build without aws-lc
/// (slow C build) and use ring. Another part of the program may have
/// installed one already, which is fine.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Blob access on the endpoint that served the manifest.
pub(crate) struct RemoteBlobs {
    client: Client,
    oref: oci_client::Reference,
    ctx: Ctx,
}

/// What error mapping needs to know.
#[derive(Clone)]
struct Ctx {
    endpoint: Endpoint,
    repository: String,
    credentials: Option<Credentials>,
    config_dir: Option<PathBuf>,
}

/// Resolves `reference` on its endpoints in order, mirrors first.
pub(crate) async fn resolve(
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
) -> Result<(Resolved, Fetcher)> {
    install_crypto_provider();
    let endpoints = options.registry.endpoints(reference.registry());
    let mut attempts: Vec<(String, Error)> = Vec::new();
    let last = endpoints.len() - 1;
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        match resolve_at(store, reference, &endpoint, options).await {
            Ok(found) => return Ok(found),
            Err(e) if i == last && attempts.is_empty() => return Err(e),
            Err(e) => {
                let name = endpoint.describe();
                tracing::warn!("pulling {reference} from {name} failed: {e}");
                options.emit(PullEvent::EndpointFailed {
                    endpoint: name.clone(),
                    error: e.to_string(),
                });
                attempts.push((name, e));
            }
        }
    }
    Err(Error::AllEndpointsFailed {
        reference: reference.to_string(),
        attempts,
    })
}

async fn resolve_at(
    store: &Store,
    reference: &Reference,
    endpoint: &Endpoint,
    options: &PullOptions,
) -> Result<(Resolved, Fetcher)> {
    let config_dir = options.registry.docker_config_dir();
    let credentials = match &config_dir {
        Some(dir) => docker_config::lookup(dir, &endpoint.host)?,
        None => None,
    };
    let ctx = Ctx {
        endpoint: endpoint.clone(),
        repository: reference.repository().to_string(),
        credentials,
        config_dir,
    };
    let client = Client::try_from(ClientConfig {
        protocol: if endpoint.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    })
    .map_err(|e| ctx.map(e, "creating the HTTP client"))?;
    let auth = match &ctx.credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let host = endpoint.host.clone();
    let repo = reference.repository().to_string();
    let oref = match (reference.digest(), reference.tag()) {
        (Some(d), _) => oci_client::Reference::with_digest(host, repo, d.to_string()),
        (None, tag) => {
            oci_client::Reference::with_tag(host, repo, tag.unwrap_or("latest").to_string())
        }
    };
    let wanted = reference.tag_or_digest();

    // The digest first (a HEAD request for a tag): if the store already has
    // that manifest, nothing else is transferred.
    let top = match reference.digest() {
        Some(d) => d.clone(),
        None => {
            let text = client
                .fetch_manifest_digest(&oref, &auth)
                .await
                .map_err(|e| ctx.map(e, &wanted))?;
            Digest::parse(&text).map_err(|reason| Error::InvalidDigest {
                input: text,
                context: format!(
                    "the manifest digest {} sent for {reference}",
                    endpoint.describe()
                ),
                reason,
            })?
        }
    };
    let top_bytes = fetch_manifest(store, &client, &oref, &auth, &ctx, &top, None).await?;
    let what = format!("manifest {top} of {reference}");
    let resolved = match manifest::parse(&top_bytes, &what)? {
        Parsed::Manifest(_) => Resolved {
            index: None,
            manifest: (top, top_bytes),
        },
        Parsed::Index(entries) => {
            let child =
                manifest::select_platform(&entries, &options.platform, &reference.to_string())?;
            let bytes = fetch_manifest(
                store,
                &client,
                &oref,
                &auth,
                &ctx,
                &child.digest,
                Some(&child),
            )
            .await?;
            Resolved {
                index: Some((top, top_bytes)),
                manifest: (child.digest, bytes),
            }
        }
    };
    client
        .store_auth_if_needed(oref.resolve_registry(), &auth)
        .await;
    Ok((
        resolved,
        Fetcher::Registry(Box::new(RemoteBlobs { client, oref, ctx })),
    ))
}

/// A manifest by digest: from the store if present, else from the registry
/// (checked against the digest, and the descriptor size when known).
async fn fetch_manifest(
    store: &Store,
    client: &Client,
    oref: &oci_client::Reference,
    auth: &RegistryAuth,
    ctx: &Ctx,
    digest: &Digest,
    desc: Option<&Desc>,
) -> Result<Vec<u8>> {
    let what = format!("manifest {digest} of {}", ctx.repository);
    if let Some(d) = desc {
        manifest::check_size(&what, d.size, MAX_MANIFEST_BYTES)?;
    }
    if store.has_blob(digest, desc.map(|d| d.size)) {
        return store.read_blob(digest, MAX_MANIFEST_BYTES);
    }
    let by_digest = oref.clone_with_digest(digest.to_string());
    let (bytes, _) = client
        .pull_manifest_raw(&by_digest, auth, MANIFEST_ACCEPT)
        .await
        .map_err(|e| ctx.map(e, digest.as_str()))?;
    manifest::check_size(&what, bytes.len() as u64, MAX_MANIFEST_BYTES)?;
    let actual = Digest::of_bytes(&bytes);
    if actual != *digest {
        return Err(Error::DigestMismatch {
            what: format!("{what} from {}", ctx.endpoint.describe()),
            expected: digest.clone(),
            actual,
        });
    }
    if let Some(d) = desc.filter(|d| d.size != bytes.len() as u64) {
        return Err(Error::SizeMismatch {
            what,
            expected: d.size,
            actual: bytes.len() as u64,
            truncated: false,
        });
    }
    Ok(bytes.to_vec())
}

impl RemoteBlobs {
    /// Streams one blob into `writer` (which checks size as it goes and
    /// digest at commit).
    pub(crate) async fn fetch(
        &self,
        desc: &Desc,
        mut writer: BlobWriter,
        options: &PullOptions,
    ) -> Result<BlobWriter> {
        let od = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.oref, &od)
            .await
            .map_err(|e| self.ctx.map(e, desc.digest.as_str()))?;
        let mut last_report = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => writer.write(&bytes)?,
                // oci-client reports a digest mismatch at the end as an I/O
                // error; our own check at commit gives the typed error.
                Err(_) if writer.written() == desc.size => break,
                Err(e) => {
                    return Err(Error::Registry {
                        registry: self.ctx.endpoint.host.clone(),
                        url: self.ctx.endpoint.describe(),
                        message: format!(
                            "download of {} broke off after {} of {} bytes: {}",
                            desc.digest,
                            writer.written(),
                            desc.size,
                            chain(&e)
                        ),
                    })
                }
            }
            if writer.written() - last_report >= 256 << 10 {
                last_report = writer.written();
                options.emit(PullEvent::BlobProgress {
                    digest: desc.digest.clone(),
                    done: last_report,
                    size: desc.size,
                });
            }
        }
        options.emit(PullEvent::BlobProgress {
            digest: desc.digest.clone(),
            done: writer.written(),
            size: desc.size,
        });
        Ok(writer)
    }
}

impl Ctx {
    /// Turns a client error into one that says what to do.
    fn map(&self, e: OciDistributionError, tag_or_digest: &str) -> Error {
        let registry = self.endpoint.host.clone();
        let unauthorized = || Error::Unauthorized {
            registry: registry.clone(),
            repository: self.repository.clone(),
            hint: self.auth_hint(),
        };
        let not_found = || Error::ManifestNotFound {
            registry: registry.clone(),
            repository: self.repository.clone(),
            tag_or_digest: tag_or_digest.to_string(),
        };
        match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => return unauthorized(),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    return unauthorized();
                }
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    return not_found();
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => return not_found(),
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => return unauthorized(),
            _ => {}
        }
        let mut message = chain(&e);
        if matches!(e, OciDistributionError::RequestError(_)) {
            message.push_str(match (self.endpoint.plain_http, &self.endpoint.mirror) {
                (true, _) => " (is the registry running and reachable?)",
                (false, Some(_)) => " (is the mirror reachable? if it serves plain http, write it as http://host:port)",
                (false, None) => {
                    " (is the registry reachable? if it serves plain http, add it to SUPERMACHINE_INSECURE_REGISTRIES)"
                }
            });
        }
        Error::Registry {
            registry,
            url: self.endpoint.describe(),
            message,
        }
    }

    fn auth_hint(&self) -> String {
        let host = &self.endpoint.host;
        match &self.credentials {
            Some(c) => format!(
                "the credentials for {host} (user {:?}) in {} were rejected; check them (docker login {host})",
                c.username,
                c.origin.display()
            ),
            None => {
                let file = self
                    .config_dir
                    .as_ref()
                    .map_or_else(|| "~/.docker/config.json".to_string(), |d| d.join("config.json").display().to_string());
                let mut hint = format!("set credentials for {host} in {file} (docker login {host})");
                if host == DOCKER_HUB {
                    hint.push_str(", or check the name: Docker Hub answers this for repositories that do not exist");
                }
                hint
            }
        }
    }
}

/// An error with its causes, `a: b: c` (reqwest's top-level message alone
/// hides the reason, e.g. "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
