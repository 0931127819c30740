//! A real gRPC OTLP backend that records what it receives (plain or TLS), and a client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackline::otlp::ProfilesRequest;
use stackline::otlp::collector::profiles_service_client::ProfilesServiceClient;
use stackline::otlp::collector::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use stackline::otlp::collector::{ExportProfilesServiceRequest, ExportProfilesServiceResponse};
use stackline::otlp::synth::decode_samples;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::*;

/// A real gRPC backend that records what it receives.
#[derive(Clone, Default)]
pub struct Backend {
    pub received: Arc<Mutex<Vec<ProfilesRequest>>>,
    pub calls: Arc<AtomicUsize>,
    /// Calls still to fail with UNAVAILABLE.
    pub fail_next: Arc<AtomicUsize>,
    /// Delay before answering each call.
    pub delay: Arc<Mutex<Duration>>,
}

#[tonic::async_trait]
impl ProfilesService for Backend {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("backend warming up"));
        }
        self.received.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportProfilesServiceResponse::default()))
    }
}

impl Backend {
    /// Serves on `port` until the returned sender is dropped or fired.
    pub async fn serve(&self, port: ReservedPort) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = port.listen();
        let svc = ProfilesServiceServer::new(self.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .max_decoding_message_size(256 << 20);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = rx.await;
                    },
                )
                .await
                .unwrap();
        });
        tx
    }

    pub fn samples(&self) -> Vec<(u64, Vec<String>, String)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(decode_samples)
            .collect()
    }

    pub fn requests(&self) -> Vec<ProfilesRequest> {
        self.received.lock().unwrap().clone()
    }
}

pub async fn client(endpoint: String) -> ProfilesServiceClient<Channel> {
    ProfilesServiceClient::connect(endpoint).await.unwrap()
}

impl Backend {
    /// Serves over TLS (requiring a client certificate signed by the CA of `tls`).
    pub async fn serve_tls(
        &self,
        port: ReservedPort,
        tls: tonic::transport::ServerTlsConfig,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = port.listen();
        let svc = ProfilesServiceServer::new(self.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
        let server = tonic::transport::Server::builder().tls_config(tls).unwrap();
        tokio::spawn(async move {
            let mut server = server;
            let _ = server
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = rx.await;
                    },
                )
                .await;
        });
        tx
    }
}
