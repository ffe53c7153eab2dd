//! The encoder's ffmpeg command line, rendered from the plan so that what runs on the encoder is
//! unit-tested here: one decode of the room's live mix, one encode per rendition, each pushed to
//! the ingest in the container its protocol carries.

use crate::model::{Encode, HwAccel, IngestKind, X264Preset};
use crate::plan::{Rendition, VideoPlan};
use crate::secrets::Secret;

/// Where the encoder's ffmpeg writes its progress (frames, bitrate) for the media health check.
pub const ENCODER_PROGRESS: &str = "/run/lectern-encoder/progress";
/// The render node a VAAPI encoder uses.
const VAAPI_DEVICE: &str = "/dev/dri/renderD128";

/// x264's preset when the master file names none.
const DEFAULT_PRESET: X264Preset = X264Preset::Veryfast;

/// Everything after `ffmpeg` for an encoder that reads `pull_url` and pushes `renditions` (the
/// main one first) with the room's `video` and `encode` settings.
pub fn encoder_args(
    pull_url: &Secret,
    renditions: &[Rendition],
    ingest: IngestKind,
    video: &VideoPlan,
    encode: &Encode,
) -> Vec<Secret> {
    let hwaccel = encode.hwaccel;
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-progress",
        ENCODER_PROGRESS,
        "-stats_period",
        "5",
    ]
    .map(String::from)
    .to_vec();
    if hwaccel == HwAccel::Vaapi {
        args.extend(
            [
                "-init_hw_device",
                &format!("vaapi=va:{VAAPI_DEVICE}"),
                "-filter_hw_device",
                "va",
            ]
            .map(String::from),
        );
    }
    args.push("-i".into());
    let mut args: Vec<Secret> = args.into_iter().map(Secret::public).collect();
    args.push(pull_url.clone());
    args.push(Secret::public("-filter_complex"));
    args.push(Secret::public(filter_graph(renditions, hwaccel)));
    let gop = (encode.keyframe_s * video.framerate).max(1).to_string();
    let preset = encode.preset.unwrap_or(DEFAULT_PRESET);
    for (i, rendition) in renditions.iter().enumerate() {
        let mut output: Vec<String> = vec![
            "-map".into(),
            format!("[v{i}]"),
            "-map".into(),
            "0:a:0".into(),
        ];
        output.extend(video_codec(ingest, hwaccel, preset, rendition, &gop));
        output.extend(audio_codec(ingest, rendition, video));
        output.extend(container(ingest));
        args.extend(output.into_iter().map(Secret::public));
        args.push(rendition.push_url.clone());
    }
    args
}

/// Splits the decoded picture once per rendition and scales the variants. VAAPI uploads first
/// and scales on the GPU.
fn filter_graph(renditions: &[Rendition], hwaccel: HwAccel) -> String {
    let upload = match hwaccel {
        HwAccel::Vaapi => "format=nv12,hwupload,",
        HwAccel::None => "",
    };
    let labels: String = (0..renditions.len()).map(|i| format!("[s{i}]")).collect();
    let mut graph = format!("[0:v]{upload}split={}{labels}", renditions.len());
    for (i, rendition) in renditions.iter().enumerate() {
        let scale = match (i, hwaccel) {
            (0, _) => "null".to_owned(),
            (_, HwAccel::Vaapi) => {
                format!("scale_vaapi=w={}:h={}", rendition.width, rendition.height)
            }
            (_, HwAccel::None) => format!("scale={}:{}", rendition.width, rendition.height),
        };
        graph.push_str(&format!(";[s{i}]{scale}[v{i}]"));
    }
    graph
}

fn video_codec(
    ingest: IngestKind,
    hwaccel: HwAccel,
    preset: X264Preset,
    r: &Rendition,
    gop: &str,
) -> Vec<String> {
    let rate = [
        "-b:v".into(),
        format!("{}k", r.video_kbps),
        "-maxrate".into(),
        format!("{}k", r.maxrate_kbps),
        "-bufsize".into(),
        format!("{}k", r.maxrate_kbps * 2),
        "-g".into(),
        gop.into(),
    ];
    let codec: &[&str] = match (ingest, hwaccel) {
        // WebM carries VP8; browsers play it straight from icecast.
        (IngestKind::Icecast, _) => &["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"],
        (_, HwAccel::Vaapi) => &["-c:v", "h264_vaapi"],
        (_, HwAccel::None) => &[
            "-c:v",
            "libx264",
            "-preset",
            preset.name(),
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-sc_threshold",
            "0",
        ],
    };
    codec.iter().map(|s| s.to_string()).chain(rate).collect()
}

fn audio_codec(ingest: IngestKind, r: &Rendition, video: &VideoPlan) -> Vec<String> {
    let codec = match ingest {
        IngestKind::Icecast => "libopus",
        IngestKind::Rtmp | IngestKind::Srt => "aac",
    };
    vec![
        "-c:a".into(),
        codec.into(),
        "-b:a".into(),
        format!("{}k", r.audio_kbps),
        "-ar".into(),
        video.audio_rate.to_string(),
        "-ac".into(),
        video.audio_channels.to_string(),
    ]
}

fn container(ingest: IngestKind) -> Vec<String> {
    let args: &[&str] = match ingest {
        IngestKind::Rtmp => &["-f", "flv"],
        IngestKind::Srt => &["-f", "mpegts"],
        IngestKind::Icecast => &["-content_type", "video/webm", "-f", "webm"],
    };
    args.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VideoMode;
    use crate::secrets::with_secrets_revealed;

    fn video() -> VideoPlan {
        VideoPlan {
            mode: VideoMode::P720,
            width: 1280,
            height: 720,
            framerate: 25,
            audio_channels: 2,
            audio_rate: 48000,
        }
    }

    fn rendition(name: &str, stream: &str, height: u32, kbps: u32, scheme: &str) -> Rendition {
        let key = Secret::new("k3y");
        Rendition {
            name: name.into(),
            stream: stream.into(),
            // 16:9, rounded to an even width as the plan does.
            width: (height * 16 / 9).div_ceil(2) * 2,
            height,
            video_kbps: kbps,
            maxrate_kbps: kbps * 2,
            audio_kbps: 128,
            bandwidth: 0,
            push_url: Secret::fill(
                &format!("{scheme}://ingest/stream/{stream}?key={{key}}"),
                "{key}",
                &key,
            ),
        }
    }

    fn encode(keyframe_s: u32, hwaccel: HwAccel, preset: Option<X264Preset>) -> Encode {
        Encode {
            keyframe_s,
            hwaccel,
            preset,
            ..Encode::default()
        }
    }

    fn renditions(scheme: &str) -> Vec<Rendition> {
        vec![
            rendition("main", "lameere", 720, 2000, scheme),
            rendition("480p", "lameere_480p", 480, 500, scheme),
        ]
    }

    fn line(args: &[Secret]) -> String {
        args.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn rtmp_x264_pushes_flv_per_rendition() {
        let args = encoder_args(
            &Secret::public("tcp://10.0.0.1:15000"),
            &renditions("rtmp"),
            IngestKind::Rtmp,
            &video(),
            &encode(2, HwAccel::None, None),
        );
        let shown = line(&args);
        assert_eq!(
            shown,
            "-hide_banner -nostdin -loglevel warning -progress /run/lectern-encoder/progress -stats_period 5 \
             -i tcp://10.0.0.1:15000 -filter_complex [0:v]split=2[s0][s1];[s0]null[v0];[s1]scale=854:480[v1] \
             -map [v0] -map 0:a:0 -c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p -sc_threshold 0 \
             -b:v 2000k -maxrate 4000k -bufsize 8000k -g 50 -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv \
             rtmp://ingest/stream/lameere?key=*** \
             -map [v1] -map 0:a:0 -c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p -sc_threshold 0 \
             -b:v 500k -maxrate 1000k -bufsize 2000k -g 50 -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv \
             rtmp://ingest/stream/lameere_480p?key=***"
        );
        let revealed = with_secrets_revealed(|| serde_json::to_string(&args).unwrap());
        assert!(revealed.contains("lameere_480p?key=k3y"), "{revealed}");
    }

    #[test]
    fn vaapi_uploads_once_and_scales_on_the_gpu() {
        let args = encoder_args(
            &Secret::public("tcp://10.0.0.1:15000"),
            &renditions("rtmp"),
            IngestKind::Rtmp,
            &video(),
            &encode(2, HwAccel::Vaapi, None),
        );
        let shown = line(&args);
        assert!(
            shown.contains("-init_hw_device vaapi=va:/dev/dri/renderD128 -filter_hw_device va -i "),
            "{shown}"
        );
        assert!(
            shown.contains(
                "[0:v]format=nv12,hwupload,split=2[s0][s1];[s0]null[v0];[s1]scale_vaapi=w=854:h=480[v1]"
            ),
            "{shown}"
        );
        assert_eq!(shown.matches("-c:v h264_vaapi -b:v").count(), 2, "{shown}");
        assert!(!shown.contains("libx264"), "{shown}");
    }

    #[test]
    fn each_ingest_gets_its_container() {
        for (ingest, scheme, format, audio) in [
            (IngestKind::Srt, "srt", "-f mpegts", "-c:a aac"),
            (
                IngestKind::Icecast,
                "icecast",
                "-content_type video/webm -f webm",
                "-c:a libopus",
            ),
        ] {
            let args = encoder_args(
                &Secret::public("srt://0.0.0.0:9000?mode=listener"),
                &renditions(scheme),
                ingest,
                &video(),
                &encode(2, HwAccel::None, None),
            );
            let shown = line(&args);
            assert_eq!(shown.matches(format).count(), 2, "{shown}");
            assert_eq!(shown.matches(audio).count(), 2, "{shown}");
            assert!(
                shown.ends_with(&format!("{scheme}://ingest/stream/lameere_480p?key=***")),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_single_rendition_needs_no_scaling() {
        let main = &renditions("rtmp")[..1];
        let args = encoder_args(
            &Secret::public("tcp://m:15000"),
            main,
            IngestKind::Rtmp,
            &video(),
            &encode(1, HwAccel::None, None),
        );
        let shown = line(&args);
        assert!(shown.contains("[0:v]split=1[s0];[s0]null[v0]"), "{shown}");
        assert!(shown.contains("-g 25 "), "{shown}");
    }

    #[test]
    fn the_preset_reaches_every_x264_rendition() {
        let args = encoder_args(
            &Secret::public("tcp://m:15000"),
            &renditions("rtmp"),
            IngestKind::Rtmp,
            &video(),
            &encode(2, HwAccel::None, Some(X264Preset::Ultrafast)),
        );
        let shown = line(&args);
        assert_eq!(shown.matches("-preset ultrafast ").count(), 2, "{shown}");
        assert!(!shown.contains("veryfast"), "{shown}");
    }
}
