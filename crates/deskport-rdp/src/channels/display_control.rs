//! The client asking for another screen size (MS-RDPEDISP, the Display Control dynamic
//! virtual channel): the requests reach the session loop, which resizes the desktop and runs
//! a Deactivation-Reactivation Sequence (MS-RDPBCGR 1.3.1.3) with the new size — or, on the
//! graphics pipeline, resets the graphics to it.

use ironrdp_displaycontrol::pdu::{DisplayControlMonitorLayout, MonitorLayoutEntry};
use ironrdp_displaycontrol::server::{DisplayControlHandler, DisplayControlServer};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// The Display Control channel (a dynamic channel of `drdynvc`), and where its size requests
/// arrive.
pub fn processor() -> (DisplayControlServer, UnboundedReceiver<(u16, u16)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (DisplayControlServer::new(Box::new(Layouts(tx))), rx)
}

/// Passes each monitor layout on as the size of the screen it describes.
struct Layouts(UnboundedSender<(u16, u16)>);

impl DisplayControlHandler for Layouts {
    fn monitor_layout(&self, layout: DisplayControlMonitorLayout) {
        match requested_size(&layout) {
            Some(size) => {
                let _ = self.0.send(size);
            }
            None => tracing::debug!(?layout, "Monitor layout without a usable size ignored"),
        }
    }
}

/// The screen a layout asks for: the rectangle around its monitors (one here: the channel
/// offers a single monitor), kept within what MS-RDPEDISP allows (200..=8192, even width).
pub fn requested_size(layout: &DisplayControlMonitorLayout) -> Option<(u16, u16)> {
    let (width, height) = layout.desktop_size();
    if width == 0 || height == 0 {
        return None;
    }
    let (width, height) = MonitorLayoutEntry::adjust_display_size(width, height);
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(width: u32, height: u32) -> DisplayControlMonitorLayout {
        DisplayControlMonitorLayout::new(&[MonitorLayoutEntry::new_primary(width, height).unwrap()])
            .unwrap()
    }

    #[test]
    fn sizes_are_kept_within_the_protocols_bounds() {
        assert_eq!(requested_size(&layout(1366, 768)), Some((1366, 768)));
        // Odd widths are made even; the entry itself refuses sizes out of bounds, so the
        // clamping is checked on a layout decoded from the wire below.
        assert_eq!(requested_size(&layout(1025, 700)), Some((1024, 700)));
    }

    #[test]
    fn each_layout_from_the_wire_is_passed_on_as_a_size() {
        use ironrdp_displaycontrol::pdu::DisplayControlPdu;
        let (tx, mut sizes) = tokio::sync::mpsc::unbounded_channel();
        let handler = Layouts(tx);
        for (w, h) in [(1280, 720), (800, 600)] {
            let bytes = ironrdp_core::encode_vec(&DisplayControlPdu::from(layout(w, h))).unwrap();
            let DisplayControlPdu::MonitorLayout(l) = ironrdp_core::decode(&bytes).unwrap() else {
                panic!("not a layout");
            };
            handler.monitor_layout(l);
        }
        assert_eq!(sizes.try_recv().ok(), Some((1280, 720)));
        assert_eq!(sizes.try_recv().ok(), Some((800, 600)));
        assert!(sizes.try_recv().is_err());
    }
}
