//! The sound formats (`rdpsnd`, MS-RDPEA) deskport's server offers and its client takes: 44.1
//! kHz stereo, as the sessions' sink plays, in IMA ADPCM (a quarter of PCM's bytes) or 16-bit
//! PCM.

use ironrdp_rdpsnd::pdu::{AudioFormat, WaveFormat};

/// The sample rate of every format.
pub const RATE: u32 = 44_100;
/// The channels of every format.
pub const CHANNELS: u16 = 2;
/// IMA ADPCM blocks of 2048 bytes: 2041 frames (46 ms) at 44.1 kHz stereo, as Windows codes it.
pub const ADPCM_BLOCK: u16 = 2048;

/// 16-bit PCM.
pub fn pcm() -> AudioFormat {
    AudioFormat {
        format: WaveFormat::PCM,
        n_channels: CHANNELS,
        n_samples_per_sec: RATE,
        n_avg_bytes_per_sec: RATE * u32::from(CHANNELS) * 2,
        n_block_align: CHANNELS * 2,
        bits_per_sample: 16,
        data: None,
    }
}

/// IMA ADPCM.
pub fn adpcm() -> AudioFormat {
    ironrdp_rdpsnd::codec::ima_adpcm_format(CHANNELS, RATE, ADPCM_BLOCK)
}
