//! The service composes: mounted in an axum `Router` under `nest_service`
//! (the router strips the prefix) beside the app's own routes, which answer
//! OCI error bodies through the public mapping.

use axum::body::Body as AxumBody;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use oci_cache_http::{OciError, OciErrorCode};
use tower_service::Service;

use crate::support::{fake_service, BlobScript};

async fn call(app: &mut Router, uri: &str) -> (StatusCode, bytes::Bytes) {
    let request = Request::get(uri).body(AxumBody::empty()).unwrap();
    let response = Service::call(app, request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn mounted_in_axum_under_a_prefix_beside_app_routes() {
    let (svc, fake) = fake_service();
    let digest = fake.add_blob(BlobScript::new(b"layer bytes"));
    let mut app = Router::new()
        .route("/app/hello", get(|| async { "hello" }))
        .route(
            "/app/denied",
            get(|| async {
                OciError::new(StatusCode::FORBIDDEN, OciErrorCode::Denied, "no")
                    .into_response()
                    .into_response()
            }),
        )
        .nest_service("/mirror", svc);

    let (status, body) = call(
        &mut app,
        &format!("/mirror/v2/library/alpine/blobs/{digest}"),
    )
    .await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, b"layer bytes".as_ref())
    );
    assert_eq!(fake.calls().total(), 1);

    let (status, body) = call(&mut app, "/mirror/v2/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"{}".as_ref()));

    let (status, body) = call(&mut app, "/mirror/v2/library/alpine/nonsense/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json["errors"][0]["code"].is_string(), "{json}");

    let (status, body) = call(&mut app, "/app/hello").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"hello".as_ref()));

    let (status, body) = call(&mut app, "/app/denied").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["code"], "DENIED");
    assert_eq!(json["errors"][0]["message"], "no");

    // Outside the prefix the mirror is not reached.
    let (status, _) = call(&mut app, "/v2/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(fake.calls().total(), 1);
}
