//! What `/ws` and `/echo` do with messages: the seed's texts, exactly.

use hub::Message;
use hub_ws::{Close, CloseCode, Ended, Handler, Session};

fn text_only() -> Close {
    Close::new(CloseCode::UNSUPPORTED, "only text messages are supported")
}

/// `/ws`: every text message reaches every client (the sender included) as
/// `Client says: {text}`; when a client leaves, the others are told.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chat;

impl Handler for Chat {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let text = message.as_text().ok_or_else(text_only)?;
        session.hub().broadcast(format!("Client says: {text}"));
        Ok(())
    }

    async fn on_close(&self, session: &Session, _ended: &Ended) {
        // When the whole server is going away nobody is "leaving".
        if !session.hub().is_shut_down() {
            session.hub().broadcast("A client disconnected");
        }
    }
}

/// `/echo`: replies `Message text was: {text}` to the sender alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let text = message.as_text().ok_or_else(text_only)?;
        // Waits while this client's reply queue is full: a client that does
        // not read its replies slows only its own reads. An error means the
        // session is already ending.
        let _ = session.send(format!("Message text was: {text}")).await;
        Ok(())
    }
}
