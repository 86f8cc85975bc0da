//! The words of a tokio-postgres error, for an operator: its own text names only the kind
//! ("db error", "error performing TLS handshake", "error connecting to server"), while what
//! the server said, why the certificate was refused or why the address could not be reached is
//! in its sources, which [`error_text`] adds.

/// `e`'s text followed by those of its sources, `: `-separated.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cause_is_part_of_the_text() {
        // A port nothing listens on: the listener is gone before the connection is made.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!("host=127.0.0.1 port={port} user=u connect_timeout=5");
        let Err(e) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await else {
            panic!("nothing listens on {port}");
        };
        assert_eq!(e.to_string(), "error connecting to server");
        let text = error_text(&e);
        assert!(
            text.starts_with("error connecting to server: ") && text.contains("refused"),
            "{text}"
        );
    }
}
