//! The pipeline's layers over a service that is not `OciService`: routing
//! puts the matched route into the request, client authentication decides by
//! it and either answers itself or calls the inner service.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use oci_cache_http::client_auth::{
    Access, ClientAuth, ClientAuthConfig, ClientAuthLayer, ClientIdentity,
};
use oci_cache_http::{body, Body, MatchedRoute, RoutingLayer};
use tower::{service_fn, Layer, Service, ServiceExt};

use crate::support::*;

const DEV: &str = "Basic ZGV2OnB3"; // dev:pw
const WRONG: &str = "Basic ZGV2Om5v"; // dev:no

/// A request (method, URI, `Authorization`), the status expected, and what
/// the inner service is expected to see (route name, user), if reached.
type Case = (
    Method,
    &'static str,
    Option<&'static str>,
    StatusCode,
    Option<(&'static str, Option<&'static str>)>,
);

/// What the inner service saw: the route name and the identity, per call.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A `service_fn` that records what reached it and answers 200 "inner".
fn inner(
    seen: Seen,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |request: Request<Empty<Bytes>>| {
        let seen = Arc::clone(&seen);
        async move {
            let route = request
                .extensions()
                .get::<MatchedRoute>()
                .map_or("none", MatchedRoute::name);
            let user = request
                .extensions()
                .get::<ClientIdentity>()
                .map(|identity| identity.0.clone());
            seen.lock().unwrap().push((route.to_owned(), user));
            Ok::<_, Infallible>(Response::new(body::full("inner")))
        }
    })
}

/// Client authentication (user `dev:pw`; ghcr.io public, docker.io at the
/// default, authenticated) over `inner`; the htpasswd file lives in `dir`.
fn auth_layer(dir: &std::path::Path) -> (ClientAuthLayer, oci_cache_core::mirror::MirrorConfig) {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("dev:{}\n", bcrypt::hash("pw", 4).unwrap()),
    )
    .unwrap();
    let config = mirrors("http://127.0.0.1:9");
    let auth = ClientAuth::new(
        &ClientAuthConfig {
            htpasswd,
            realm: "layers".into(),
            access: [("ghcr.io".to_owned(), Access::Public)].into(),
            private_digests: None,
        },
        &config,
        &[],
    )
    .unwrap();
    let layer = ClientAuthLayer::new(Arc::new(auth), Arc::new(FakeUpstream::new()));
    (layer, config)
}

fn request(method: Method, uri: &str, authorization: Option<&str>) -> Request<Empty<Bytes>> {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.body(Empty::new()).unwrap()
}

#[tokio::test]
async fn client_auth_admits_or_refuses_by_the_route_before_the_inner_service() {
    let dir = tempfile::tempdir().unwrap();
    let (auth, config) = auth_layer(dir.path());
    let seen = Seen::default();
    let routing = RoutingLayer::new(Arc::new(config), Vec::new());
    let stack = routing.layer(auth.layer(inner(Arc::clone(&seen))));

    let cases: [Case; 9] = [
        // docker.io is authenticated: refused without (or with wrong) credentials.
        (
            Method::GET,
            "/v2/library/alpine/manifests/3.20",
            None,
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            Method::GET,
            "/v2/library/alpine/manifests/3.20",
            Some(WRONG),
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            Method::GET,
            "/v2/library/alpine/manifests/3.20",
            Some(DEV),
            StatusCode::OK,
            Some(("manifest", Some("dev"))),
        ),
        // ghcr.io is public: anonymous reads go through, without an identity.
        (
            Method::GET,
            "/v2/ghcr.io/org/app/manifests/1",
            None,
            StatusCode::OK,
            Some(("manifest", None)),
        ),
        // The ping and purge need credentials; the probes do not.
        (Method::GET, "/v2/", None, StatusCode::UNAUTHORIZED, None),
        (
            Method::DELETE,
            "/admin/purge?ref=alpine",
            None,
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            Method::DELETE,
            "/admin/purge?ref=alpine",
            Some(DEV),
            StatusCode::OK,
            Some(("purge", Some("dev"))),
        ),
        (
            Method::GET,
            "/healthz",
            None,
            StatusCode::OK,
            Some(("healthz", None)),
        ),
        // An unknown route goes on: the inner service answers its error.
        (
            Method::GET,
            "/nowhere",
            None,
            StatusCode::OK,
            Some(("unknown", None)),
        ),
    ];
    for (method, uri, authorization, status, reached) in cases {
        seen.lock().unwrap().clear();
        let response = stack
            .clone()
            .oneshot(request(method.clone(), uri, authorization))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            status,
            "{method} {uri} {authorization:?}"
        );
        if status == StatusCode::UNAUTHORIZED {
            assert!(response.headers().contains_key("www-authenticate"), "{uri}");
        }
        let seen: Vec<_> = seen.lock().unwrap().drain(..).collect();
        let expected: Vec<(String, Option<String>)> = reached
            .into_iter()
            .map(|(route, user)| (route.to_owned(), user.map(str::to_owned)))
            .collect();
        assert_eq!(seen, expected, "{method} {uri} {authorization:?}");
    }
}

/// Without the routing layer in front, client authentication cannot tell
/// what is asked for: it refuses rather than guess, and calls nothing.
#[tokio::test]
async fn client_auth_without_routing_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (auth, _) = auth_layer(dir.path());
    let seen = Seen::default();
    let stack = auth.layer(inner(Arc::clone(&seen)));
    for authorization in [None, Some(DEV)] {
        let response = stack
            .clone()
            .oneshot(request(
                Method::GET,
                "/v2/ghcr.io/org/app/manifests/1",
                authorization,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(seen.lock().unwrap().is_empty());
}
