//! The session on the graphics pipeline (MS-RDPEGFX): what the graphics channel reports
//! ([`GfxEvent`]) switches the screen's encoder — to a [`GfxEncoder`] once the client is
//! ready (the first frame paints the whole surface), back to the classic one for good when
//! the channel fails or closes (the whole screen again, as bitmap updates). Its frames are
//! acknowledged like the classic path's: the session's flow control ([`Screen::ready`]) holds
//! frames back while too many are unacknowledged, so a client that stops acknowledging cannot
//! make the server queue frames without bound.

use crate::channels::gfx::GfxEvent;
use crate::encode::gfx::{GfxChannel, GfxEncoder};
use crate::encode::ScreenEncoder;

use super::screen::Screen;

/// The graphics pipeline's state in a session.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// The classic encoder, kept while the graphics pipeline's is in use.
    classic: Option<Box<dyn ScreenEncoder>>,
}

impl Pipeline {
    /// Whether the screen goes over the graphics pipeline.
    pub fn active(&self) -> bool {
        self.classic.is_some()
    }

    /// Handles what the graphics channel reported. `drdynvc_id`, `user_channel_id`: the MCS
    /// channels frames go on. True when it was a frame acknowledgement (one held back may go).
    pub fn event(
        &mut self,
        event: GfxEvent,
        screen: &mut Screen,
        drdynvc_id: Option<u16>,
        user_channel_id: u16,
    ) -> bool {
        match event {
            GfxEvent::Ready {
                channel_id,
                caps,
                link,
            } => {
                let Some(mcs_id) = drdynvc_id else {
                    tracing::warn!("Graphics channel ready without drdynvc: not used");
                    return false;
                };
                let channel = GfxChannel {
                    dvc_id: channel_id,
                    mcs_id,
                    user_id: user_channel_id,
                };
                let previous = screen.set_encoder(Box::new(GfxEncoder::new(channel, caps, link)));
                if self.classic.is_none() {
                    tracing::info!("The screen goes over the graphics pipeline from now on");
                    self.classic = Some(previous);
                }
                false
            }
            GfxEvent::Acknowledged { frame_id } => {
                screen.acknowledged(frame_id);
                true
            }
            GfxEvent::Failed(reason) => {
                if let Some(classic) = self.classic.take() {
                    tracing::warn!(
                        reason,
                        "Back to the classic screen updates: the graphics pipeline stopped"
                    );
                    drop(screen.set_encoder(classic));
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use deskport_desktop::{Desktop, Frame, Input};
    use ironrdp_core::{decode_cursor, ReadCursor};
    use ironrdp_graphics::zgfx::CompressionMode;
    use ironrdp_pdu::bitmap::BitmapUpdateData;
    use ironrdp_pdu::fast_path::{FastPathHeader, FastPathUpdatePdu, UpdateCode};

    use super::*;
    use crate::encode::gfx::testing::{Client, DRDYNVC, USER};
    use crate::encode::{BitmapEncoder, Codec};

    /// A desktop showing whatever frame the test sets.
    #[derive(Debug)]
    struct Picture(Mutex<Frame>);

    impl Picture {
        fn show(&self, w: u16, h: u16, seed: u8) {
            let data = (0..usize::from(w) * usize::from(h))
                .flat_map(|i| [(i % 251) as u8 ^ seed, (i / 97) as u8, seed, 0])
                .collect();
            *self.0.lock().unwrap() = Frame {
                width: w,
                height: h,
                data: Arc::new(data),
                generation: 0,
            };
        }
    }

    impl Desktop for Picture {
        fn size(&self) -> (u16, u16) {
            let f = self.0.lock().unwrap();
            (f.width, f.height)
        }

        fn capture(&self) -> anyhow::Result<Frame> {
            Ok(self.0.lock().unwrap().clone())
        }

        fn input(&self, _event: Input) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn session() -> (Arc<Picture>, Screen) {
        let desktop = Arc::new(Picture(Mutex::new(Frame {
            width: 1,
            height: 1,
            data: Arc::new(vec![0; 4]),
            generation: 0,
        })));
        desktop.show(96, 64, 0);
        let classic = BitmapEncoder::new(32, Codec::Auto, true).with_planar_alpha(false);
        let screen = Screen::new(desktop.clone(), Box::new(classic), true);
        (desktop, screen)
    }

    /// The pixels fast-path bitmap updates in `out` cover (nothing else may be in it).
    fn bitmap_pixels(out: &[u8]) -> u64 {
        let mut cursor = ReadCursor::new(out);
        let mut pixels = 0;
        while !cursor.is_empty() {
            let _: FastPathHeader = decode_cursor(&mut cursor).unwrap();
            let update: FastPathUpdatePdu<'_> = decode_cursor(&mut cursor).unwrap();
            assert_eq!(update.update_code, UpdateCode::Bitmap);
            let data: BitmapUpdateData<'_> = ironrdp_core::decode(update.data).unwrap();
            for r in data.rectangles {
                pixels += u64::from(r.width) * u64::from(r.height);
            }
        }
        pixels
    }

    fn ready(client: &mut Client) -> GfxEvent {
        client.events.try_recv().unwrap()
    }

    /// Classic bitmaps until the client is ready on the graphics channel; then the whole
    /// screen over it, and only over it; when the client sends something malformed, the
    /// whole screen again as bitmaps, and no more graphics channel data.
    #[tokio::test]
    async fn the_screen_switches_to_the_graphics_pipeline_and_back_when_it_fails() {
        let (desktop, mut screen) = session();
        let mut pipeline = Pipeline::default();
        let mut out = Vec::new();
        screen.update(&mut out).await.unwrap();
        assert_eq!(bitmap_pixels(&out), 96 * 64);

        let mut client = Client::connect(CompressionMode::Never);
        let event = ready(&mut client);
        pipeline.event(event, &mut screen, Some(DRDYNVC), USER);
        assert!(pipeline.active());
        // The screen has not changed, and yet the client gets all of it on its surface.
        out.clear();
        screen.update(&mut out).await.unwrap();
        client.receive(&out);
        assert!(client.shows(&desktop.capture().unwrap()));
        // Changes go the same way (and are acknowledged).
        desktop.show(96, 64, 9);
        out.clear();
        screen.update(&mut out).await.unwrap();
        client.receive(&out);
        assert!(client.shows(&desktop.capture().unwrap()));
        assert_eq!(client.messages, 2);
        while let Ok(event) = client.events.try_recv() {
            assert!(matches!(event, GfxEvent::Acknowledged { .. }), "{event:?}");
            pipeline.event(event, &mut screen, Some(DRDYNVC), USER);
        }
        assert_eq!(screen.unacknowledged(), Some(0));

        // The client acknowledges a frame that was never sent: the channel stops …
        let bogus = ironrdp_core::encode_vec(&ironrdp_egfx::pdu::GfxPdu::FrameAcknowledge(
            ironrdp_egfx::pdu::FrameAcknowledgePdu {
                queue_depth: ironrdp_egfx::pdu::QueueDepth::Unavailable,
                frame_id: 1000,
                total_frames_decoded: 0,
            },
        ))
        .unwrap();
        use ironrdp_dvc::DvcProcessor as _;
        assert!(client.server.process(5, &bogus).unwrap().is_empty());
        let event = client.events.try_recv().unwrap();
        assert!(matches!(event, GfxEvent::Failed(_)), "{event:?}");
        pipeline.event(event, &mut screen, Some(DRDYNVC), USER);
        assert!(!pipeline.active());
        // … and the whole screen comes again as bitmap updates (only those).
        out.clear();
        screen.update(&mut out).await.unwrap();
        assert_eq!(bitmap_pixels(&out), 96 * 64);
        assert_eq!(screen.unacknowledged(), None);
    }

    /// A client that stops acknowledging gets at most the session's window of frames; its
    /// acknowledgements let the next ones go. A resize on the graphics pipeline is a new
    /// surface, painted whole.
    #[tokio::test]
    async fn frames_wait_for_acknowledgements_and_resizes_reset_the_graphics() {
        let (desktop, mut screen) = session();
        let mut pipeline = Pipeline::default();
        let mut client = Client::connect(CompressionMode::Auto);
        let event = ready(&mut client);
        pipeline.event(event, &mut screen, Some(DRDYNVC), USER);
        let mut unread = Vec::new();
        let mut sent = 0;
        for seed in 0..100u8 {
            if !screen.ready() {
                continue;
            }
            desktop.show(96, 64, seed);
            screen.update(&mut unread).await.unwrap();
            sent += 1;
        }
        assert_eq!(sent, super::super::screen::WINDOW);
        assert_eq!(screen.unacknowledged(), Some(sent));
        // The client reads and acknowledges everything: frames go again.
        client.receive(&unread);
        while let Ok(event) = client.events.try_recv() {
            pipeline.event(event, &mut screen, Some(DRDYNVC), USER);
        }
        assert!(screen.ready());
        assert!(client.shows(&desktop.capture().unwrap()));

        // A new size (as after Display Control): the client's output follows.
        desktop.show(64, 48, 1);
        screen.resend();
        let mut out = Vec::new();
        screen.update(&mut out).await.unwrap();
        client.receive(&out);
        assert_eq!(client.size, (64, 48));
        assert!(client.shows(&desktop.capture().unwrap()));
    }
}
