//! The streaming-backend role without a VM: its overlays rendered by the builder for a two-room plan
//! and checked as text; then (LECTERN_IMAGE_TESTS=1, root) this machine's nginx runs on exactly those
//! files, chrooted into them laid over the host's root in a throwaway mount and network namespace, while
//! ffmpeg publishes test streams: the room's key gets HLS, any other is refused and logged.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lectern_builder::context::Plan;
use lectern_builder::recipe::{OverlayKind, Recipes};
use lectern_builder::tree::{Entry, Tree};

const ROLE: &str = "streaming-backend";
const BACKEND: &str = "stream-backend";
const LAMEERE_KEY: &str = "lameere-key-7Qx_9";
const CORNIL_KEY: &str = "cornil-key-Zr4_2";

/// Two rooms on the VM lab's network: lameere with a 240p variant, IRC and a schedule page; cornil with
/// only its main rendition and a name full of what HTML and nginx's config syntax must escape.
const MASTER: &str = r##"
schema_version = 1

[conference]
name = "FOSDEM 2027"
slug = "fosdem2027"
org = "fosdem"
url = "https://fosdem.org/2027/"
irc_network = "libera"

[streaming]
ingest = "rtmp"
ingest_url = "rtmp://10.99.0.30/stream/{room}?key={key}"
hls_url = "http://10.99.0.30/hls/{room}.m3u8"
watch_url = "http://10.99.0.30/watch/{room}"

[network]
domain = "video.example.org"
subnet = "10.99.0.0/24"
gateway = "10.99.0.254"
dns = ["10.99.0.1"]

[network.dhcp]
mode = "authoritative"
interface = "br0"
range = ["10.99.0.200", "10.99.0.250"]

[netboot]
http_port = 8080
store = "store"

[defaults.video]
mode = "360p"
framerate = 15

[defaults.encode]
video_kbps = 800
maxrate_kbps = 1000
keyframe_s = 2
audio_kbps = 96
variants = [{ name = "240p", height = 240, video_kbps = 300 }]

[secrets]
file = "secrets.toml"

[[rooms]]
slug = "lameere"
name = "UB2.252A (Lameere)"
irc_channel = "#fosdem-lameere"
url = "https://fosdem.org/2027/schedule/room/ub2252a/"
sources = ["cam"]
audio_source = "cam"
stream_key = "secret:stream_keys.lameere"

[[rooms]]
slug = "cornil"
name = "H.1301 'Cornil' <$5 \\ \"quoted\">"
sources = ["cam"]
audio_source = "cam"
stream_key = "secret:stream_keys.cornil"
encode = { variants = [] }

[[machines]]
hostname = "control"
ip = "10.99.0.1"
role = "netboot"

[[machines]]
hostname = "lameere-mixer"
mac = "52:54:00:00:02:01"
ip = "10.99.0.64"
role = "mixer"
room = "lameere"

[[machines]]
hostname = "lameere-cam"
mac = "52:54:00:00:02:02"
ip = "10.99.0.128"
role = "source"
room = "lameere"
source = "cam"
capture = { kind = "test" }

[[machines]]
hostname = "cornil-mixer"
mac = "52:54:00:00:02:03"
ip = "10.99.0.65"
role = "mixer"
room = "cornil"

[[machines]]
hostname = "cornil-cam"
mac = "52:54:00:00:02:04"
ip = "10.99.0.129"
role = "source"
room = "cornil"
source = "cam"
capture = { kind = "test" }

[[servers]]
hostname = "stream-backend"
role = "streaming-backend"
where = "local-vm"
host = "control"
mac = "52:54:00:00:02:30"
ip = "10.99.0.30"
"##;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A role's root image overlay (base + role, role-wide context) and one host's layer, rendered by the
/// builder as an image build would.
struct Layers {
    config: Tree,
    host: Tree,
    units: Vec<String>,
    /// The host's render context (secrets revealed).
    context: serde_json::Value,
}

fn render() -> Layers {
    render_master(MASTER)
}

fn render_master(master: &str) -> Layers {
    let mut hosts = render_role(master, ROLE);
    assert_eq!(hosts.len(), 1, "one backend in the plan");
    let (hostname, layers) = hosts.pop().unwrap();
    assert_eq!(hostname, BACKEND);
    layers
}

/// The layers of every host of `role` in `master` (with this test's stream keys), in plan order.
fn render_role(master: &str, role: &str) -> Vec<(String, Layers)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("master.toml"), master).unwrap();
    let secrets = dir.path().join("secrets.toml");
    fs::write(
        &secrets,
        format!("[stream_keys]\nlameere = \"{LAMEERE_KEY}\"\ncornil = \"{CORNIL_KEY}\"\n"),
    )
    .unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    render_plan(&Plan::load(&dir.path().join("master.toml")).unwrap(), role)
}

fn render_plan(plan: &Plan, role: &str) -> Vec<(String, Layers)> {
    let recipes = Recipes::load(&repo().join("recipes"), &repo().join("overlays")).unwrap();
    let config = recipes
        .render(
            role,
            OverlayKind::Config,
            &plan.role_context(
                role,
                lectern_builder::context::Anchors {
                    netbootd_pin: "sha256//pin",
                    journal_ca: "-----BEGIN CERTIFICATE-----\n",
                },
            ),
        )
        .unwrap();
    (plan.host_contexts(role).into_iter())
        .map(|(hostname, context)| {
            let host = recipes.render(role, OverlayKind::Host, &context).unwrap();
            let layers = Layers {
                config: config.clone(),
                host,
                units: recipes.units(role).unwrap(),
                context,
            };
            (hostname, layers)
        })
        .collect()
}

fn file<'t>(tree: &'t Tree, path: &str) -> (u32, &'t str) {
    match tree.get(path) {
        Some(Entry::File { mode, content }) => (*mode, std::str::from_utf8(content).unwrap()),
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn backend_layers_follow_the_plan() {
    let layers = render();
    assert!(layers.units.iter().any(|u| u == "nginx.service"));
    let (_, drop_in) = file(
        &layers.config,
        "etc/systemd/system/nginx.service.d/lectern.conf",
    );
    assert!(
        drop_in.contains("WantedBy=lectern-role.target\n"),
        "{drop_in}"
    );
    assert!(
        drop_in.contains("Before=lectern-role.target\n"),
        "{drop_in}"
    );

    let (mode, keys) = file(&layers.host, "etc/lectern/backend/publish-keys.map");
    assert_eq!(mode, 0o600, "the keys are secrets");
    for line in [
        format!("\"lameere {LAMEERE_KEY}\" 1;\n"),
        format!("\"lameere_240p {LAMEERE_KEY}\" 1;\n"),
        format!("\"cornil {CORNIL_KEY}\" 1;\n"),
    ] {
        assert!(keys.contains(&line), "{line} missing from\n{keys}");
    }
    assert!(!keys.contains("cornil_"), "cornil has no variants:\n{keys}");

    let (_, rtmp) = file(&layers.host, "etc/lectern/backend/rtmp.conf");
    assert!(rtmp.contains("application \"stream\" {"), "{rtmp}");

    let (_, site) = file(&layers.host, "etc/lectern/backend/site.conf");
    let master = "#EXT-X-STREAM-INF:BANDWIDTH=1096000,RESOLUTION=640x360,CODECS=\\\"avc1.64001f,mp4a.40.2\\\"\\nlameere/index.m3u8\\n\
                  #EXT-X-STREAM-INF:BANDWIDTH=471000,RESOLUTION=426x240,CODECS=\\\"avc1.64001f,mp4a.40.2\\\"\\nlameere_240p/index.m3u8\\n\";";
    assert!(site.contains(master), "{site}");
    assert!(site.contains("location = \"/watch/cornil\" {"), "{site}");
    // The room name reaches the page as HTML, and nothing of it as nginx syntax ($ variables, quotes).
    assert!(
        site.contains("H.1301 &#39;Cornil&#39; &lt;&#36;5 &#92; &quot;quoted&quot;&gt;"),
        "{site}"
    );
    assert!(!site.contains("$5"), "{site}");

    // Without {key} in the ingest URL the stream name alone is enough.
    let keyless = MASTER
        .replace("?key={key}", "")
        .replace("stream_key = \"secret:stream_keys.lameere\"\n", "")
        .replace("stream_key = \"secret:stream_keys.cornil\"\n", "");
    let open = render_master(&keyless);
    let (_, keys) = file(&open.host, "etc/lectern/backend/publish-keys.map");
    assert!(
        keys.contains("\"~^lameere_240p \" 1;\n") && keys.contains("\"~^cornil \" 1;\n"),
        "{keys}"
    );

    // The keys reach the host layer's key map and its list of secrets to keep out of logs, and nothing
    // else.
    let (mode, redact) = file(&layers.host, "etc/lectern/redact");
    assert_eq!(mode, 0o600, "the list holds the secrets");
    assert!(
        redact.contains(&format!("\n{LAMEERE_KEY}\n"))
            && redact.contains(&format!("\n{CORNIL_KEY}\n")),
        "{redact}"
    );
    for (name, tree) in [("config", &layers.config), ("host", &layers.host)] {
        let bytes = tree.to_cpio("", 0);
        let text = String::from_utf8_lossy(&bytes);
        let expected = if name == "host" { 3 + 2 } else { 0 };
        let found = text.matches(LAMEERE_KEY).count() + text.matches(CORNIL_KEY).count();
        assert_eq!(found, expected, "{name} layer holds a key outside the map");
    }
}

/// Runs as root in a private mount and network namespace (`$1` layer dir, `$2` work dir, `$3` syslog
/// socket, `$4` the server's address, `$5` a tmpfiles.d file or nothing): the rendered layers over a
/// read-only view of this machine's root, like the image's squashfs under its tmpfs overlay, with the
/// RAM filesystems and the journal's /dev/log the image has at boot; tmpfiles.d as
/// systemd-tmpfiles-setup runs it, `nginx -t` as nginx.service's ExecStartPre, then nginx in the
/// foreground.
const NAMESPACE: &str = r#"set -eu
layer="$1"; work="$2"; syslog="$3"; address="$4"; tmpfiles="${5:-}"
mount -t tmpfs -o mode=0755 lectern-backend-test "$work"
mkdir "$work/layer" "$work/upper" "$work/work" "$work/root"
# Overlay layers must not overlap, and "/" holds every directory outside this tmpfs.
cp -a "$layer/." "$work/layer/"
root="$work/root"
mount -t overlay -o "lowerdir=$work/layer:/,upperdir=$work/upper,workdir=$work/work" lectern-backend-root "$root"
mount -t tmpfs -o mode=0755 run "$root/run"
mount -t tmpfs -o mode=1777 tmp "$root/tmp"
mount -t tmpfs -o mode=0755 dev "$root/dev"
for node in null zero random urandom; do
	touch "$root/dev/$node"
	mount --bind "/dev/$node" "$root/dev/$node"
done
touch "$root/dev/log"
mount --bind "$syslog" "$root/dev/log"
mount -t proc proc "$root/proc"
ip link set lo up
# The plan's URLs name the server's address: give it to this namespace's loopback.
ip addr add "$address/32" dev lo
if [ -n "$tmpfiles" ]; then chroot "$root" systemd-tmpfiles --create "$tmpfiles"; fi
chroot "$root" nginx -t -q
exec chroot "$root" nginx -g 'daemon off;'
"#;

const TOOLS: &[&str] = &[
    "nginx",
    "ffmpeg",
    "ffprobe",
    "curl",
    "cpio",
    "unshare",
    "nsenter",
    "ip",
    "chroot",
    "mount",
    "systemd-tmpfiles",
    "tc",
];

/// Whether to run the nginx test: only with LECTERN_IMAGE_TESTS=1, and then everything it needs must be
/// there.
fn ingest_test_enabled() -> bool {
    if std::env::var("LECTERN_IMAGE_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipping: the backend ingest test runs nginx and ffmpeg as root; set LECTERN_IMAGE_TESTS=1 to run it"
        );
        return false;
    }
    let mut missing: Vec<String> = TOOLS
        .iter()
        .filter(|tool| find_tool(tool).is_none())
        .map(|tool| tool.to_string())
        .collect();
    for file in [
        "/usr/lib/nginx/modules/ngx_rtmp_module.so",
        "/etc/nginx/modules-enabled/50-mod-rtmp.conf",
        "/etc/nginx/mime.types",
    ] {
        if !Path::new(file).exists() {
            missing.push(file.into());
        }
    }
    assert!(
        missing.is_empty(),
        "LECTERN_IMAGE_TESTS=1 but the backend ingest test lacks {} (scripts/install-deps.sh installs them)",
        missing.join(", ")
    );
    let status = fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0")),
        "LECTERN_IMAGE_TESTS=1 but the backend ingest test needs root (mount and network namespaces)"
    );
    true
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// A process group this test started (the command leads it): stopped, with everything it forked, when
/// dropped, also when an assertion fails.
struct Group {
    child: Child,
    what: &'static str,
}

impl Group {
    fn spawn(mut command: Command, what: &'static str) -> Self {
        command.process_group(0).stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Self { child, what }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
    }

    /// Waits until the leader exits (killing the group after `limit`); its exit status.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.signal("-KILL");
                let _ = self.child.wait();
                panic!("{} still running after {limit:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // nginx's fast shutdown stops its workers too; whatever is left of the group is killed.
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

/// journald's syslog socket, as far as nginx can tell: collects what arrives.
struct Syslog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Syslog {
    fn bind(path: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let socket = UnixDatagram::bind(path).unwrap();
        // Like /dev/log: nginx's worker (www-data) writes the access log.
        fs::set_permissions(path, fs::Permissions::from_mode(0o666)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        // Ends with the test process; a blocked read times out.
        std::thread::spawn(move || {
            let mut buffer = vec![0; 65536];
            loop {
                match socket.recv(&mut buffer) {
                    Ok(n) => collected
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("syslog socket: {e}"),
                }
            }
        });
        Self { lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (a few seconds at most) for a message containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.lines().into_iter().find(|line| line.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no syslog message with {needle:?}; got {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The backend's directory for nginx-rtmp's HLS, made at boot.
const HLS_TMPFILES: &str = "/usr/lib/tmpfiles.d/lectern-hls.conf";

/// A role's nginx on its rendered layers in a namespace of its own (see [`NAMESPACE`]), with what it
/// sends to the journal.
struct Server {
    nginx: Group,
    syslog: Syslog,
    /// nginx's stdout and stderr.
    log: PathBuf,
}

impl Server {
    /// Starts nginx on `layers` at `address`, its files under `dir` (named after the layers' host).
    fn start(layers: &Layers, dir: &Path, address: &str, tmpfiles: Option<&str>) -> Server {
        let name = layers.context["host"]["hostname"].as_str().unwrap();
        let dir = dir.join(name);
        let (layer, work) = (dir.join("layer"), dir.join("work"));
        fs::create_dir_all(&layer).unwrap();
        fs::create_dir(&work).unwrap();
        // The order of a boot: the root image's overlay, then the host layer copied over it.
        extract(&layers.config, &layer);
        extract(&layers.host, &layer);
        let syslog_path = dir.join("log.sock");
        let syslog = Syslog::bind(&syslog_path);
        let log = dir.join("nginx.log");
        let output = fs::File::create(&log).unwrap();
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--net", "--propagation", "private", "sh", "-c"])
            .arg(NAMESPACE)
            .arg(format!("lectern-{name}-test"))
            .args([&layer, &work, &syslog_path])
            .args([address, tmpfiles.unwrap_or_default()])
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        Server {
            nginx: Group::spawn(command, "nginx"),
            syslog,
            log,
        }
    }
}

/// A command run inside nginx's network namespace.
/// What ffprobe, in `group`'s namespace, finds behind the playlist `url`, following it into every
/// rendition: each codec once, video with its size.
fn streams_decoded(group: &Group, url: &str) -> Vec<String> {
    let probe = in_netns(group, "timeout")
        .args(["20", "ffprobe", "-v", "error", "-of", "json"])
        .args(["-show_entries", "stream=codec_name,width,height"])
        .arg(url)
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let probe: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let mut found: Vec<String> = (probe["streams"].as_array().unwrap().iter())
        .map(|s| match s["codec_name"].as_str().unwrap() {
            "h264" => format!("h264 {}x{}", s["width"], s["height"]),
            other => other.to_owned(),
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

fn in_netns(nginx: &Group, program: &str) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/proc/{}/ns/net", nginx.pid()))
        .arg(program);
    command
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// GET inside the namespace with curl (a client we did not write); status 0 if nothing answered.
fn get(nginx: &Group, url: &str) -> Response {
    let output = in_netns(nginx, "curl")
        .args(["--silent", "--max-time", "5", "--include", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Response {
            status: 0,
            headers: Vec::new(),
            body: text,
        };
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Polls `url` until `ready` accepts the response.
fn wait_for_url(nginx: &mut Group, url: &str, limit: Duration, ready: impl Fn(&Response) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        assert!(!nginx.exited(), "nginx exited");
        let response = get(nginx, url);
        if ready(&response) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready after {limit:?}: {} {}",
            response.status,
            response.body
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// ffmpeg publishing a test picture and tone for `seconds` (0 = until stopped) to each `(url, width,
/// height)` of `outputs`.
fn publish(nginx: &Group, outputs: &[(String, u64, u64)], seconds: u32, log: &Path) -> Group {
    let mut command = in_netns(nginx, "ffmpeg");
    command.args(["-hide_banner", "-loglevel", "warning", "-nostdin", "-re"]);
    command.args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=15"]);
    command.args(["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000"]);
    if seconds > 0 {
        command.args(["-t", &seconds.to_string()]);
    }
    let labels: String = (0..outputs.len()).map(|i| format!("[s{i}]")).collect();
    let mut graph = format!("[0:v]split={}{labels}", outputs.len());
    for (i, (_, width, height)) in outputs.iter().enumerate() {
        graph.push_str(&format!(";[s{i}]scale={width}:{height}[v{i}]"));
    }
    command.args(["-filter_complex", &graph]);
    for (i, (url, _, _)) in outputs.iter().enumerate() {
        command.args(["-map", &format!("[v{i}]"), "-map", "1:a"]);
        command.args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
        ]);
        // A keyframe every 2 s, the plan's keyframe_s: one per HLS fragment.
        command.args([
            "-g", "30", "-b:v", "500k", "-c:a", "aac", "-b:a", "96k", "-f", "flv",
        ]);
        command.arg(url);
    }
    command
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap());
    Group::spawn(command, "ffmpeg")
}

fn extract(tree: &Tree, into: &Path) {
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "--extract", "--make-directories", "--directory"])
        .arg(into)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    cpio.stdin
        .take()
        .unwrap()
        .write_all(&tree.to_cpio("", 0))
        .unwrap();
    assert!(cpio.wait().unwrap().success());
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        file.read_to_string(&mut text).unwrap();
    }
    text
}

#[test]
fn ingest_takes_only_the_rooms_keys_and_serves_hls_and_watch_pages() {
    if !ingest_test_enabled() {
        return;
    }
    let started = Instant::now();
    let layers = render();
    let backend = &layers.context["host"]["config"][ROLE];
    let address = layers.context["host"]["ip"].as_str().unwrap().to_owned();
    let rooms = backend["rooms"].as_array().unwrap();
    let (lameere, cornil) = (&rooms[0], &rooms[1]);
    let text = |value: &serde_json::Value| value.as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let Server {
        mut nginx,
        syslog,
        log: nginx_log,
    } = Server::start(&layers, dir.path(), &address, Some(HLS_TMPFILES));
    let watch_index = format!("http://{address}{}", text(&backend["watch_path"]));
    wait_for_url(&mut nginx, &watch_index, Duration::from_secs(10), |r| {
        r.status == 200
    });

    // Every rendition of lameere, with the push URLs (and key) the plan gives its encoders.
    let renditions: Vec<(String, u64, u64)> = lameere["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                text(&r["push_url"]),
                r["width"].as_u64().unwrap(),
                r["height"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(renditions.len(), 2);
    assert!(renditions[0].0.ends_with(&format!("?key={LAMEERE_KEY}")));
    let _encoder = publish(
        &nginx,
        &renditions,
        0,
        &dir.path().join("ffmpeg-lameere.log"),
    );

    let hls = format!("http://{address}{}", text(&backend["hls_path"]));
    for stream in ["lameere", "lameere_240p"] {
        wait_for_url(
            &mut nginx,
            &format!("{hls}{stream}/index.m3u8"),
            Duration::from_secs(20),
            |r| r.status == 200 && r.body.matches("#EXTINF:").count() >= 2,
        );
    }
    let playlist = get(&nginx, &format!("{hls}lameere/index.m3u8"));
    assert_eq!(
        playlist.header("Content-Type"),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(playlist.header("Cache-Control"), Some("no-cache"));
    assert_eq!(playlist.header("Access-Control-Allow-Origin"), Some("*"));
    assert!(
        playlist.body.contains("#EXTINF:2.0"),
        "2 s fragments: {}",
        playlist.body
    );
    let segment = playlist
        .body
        .lines()
        .find(|line| line.ends_with(".ts"))
        .unwrap();
    let segment = get(&nginx, &format!("{hls}lameere/{segment}"));
    assert_eq!(segment.status, 200);
    assert_eq!(segment.header("Content-Type"), Some("video/mp2t"));
    assert_eq!(segment.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(segment.header("Cache-Control"), None);

    // The room's own playlist, from the plan, lists both renditions; ffprobe follows it into each.
    let room_url = text(&lameere["hls_url"]);
    let master = get(&nginx, &room_url);
    assert_eq!(master.status, 200);
    assert_eq!(
        master.header("Content-Type"),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(master.header("Cache-Control"), Some("no-cache"));
    assert_eq!(master.header("Access-Control-Allow-Origin"), Some("*"));
    assert!(
        master.body.contains(
            "RESOLUTION=426x240,CODECS=\"avc1.64001f,mp4a.40.2\"\nlameere_240p/index.m3u8\n"
        ),
        "{}",
        master.body
    );
    assert_eq!(
        streams_decoded(&nginx, &room_url),
        ["aac", "h264 426x240", "h264 640x360"]
    );

    // nginx-rtmp's worker (www-data) wrote them into the tmpfiles.d directory.
    let owner = Command::new("nsenter")
        .arg(format!("--target={}", nginx.pid()))
        .args(["--mount", "--root", "stat", "-c", "%U %a"])
        .args(["/run/lectern-hls", "/run/lectern-hls/lameere/index.m3u8"])
        .args(["/etc/lectern/backend/publish-keys.map"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&owner.stdout),
        "www-data 755\nwww-data 644\nroot 600\n"
    );

    // Refused: another room's key, no key, a stream no room has. Accepted: cornil's own key.
    let cornil_stream = text(&cornil["renditions"][0]["push_url"]);
    let cornil_base = cornil_stream.split('?').next().unwrap().to_owned();
    let size = (640, 360);
    for (i, url) in [
        format!("{cornil_base}?key={LAMEERE_KEY}"),
        cornil_base.clone(),
        cornil_base.replace("/cornil", "/nosuchroom") + &format!("?key={LAMEERE_KEY}"),
    ]
    .into_iter()
    .enumerate()
    {
        let log = dir.path().join(format!("ffmpeg-refused-{i}.log"));
        let status = publish(&nginx, &[(url.clone(), size.0, size.1)], 3, &log)
            .wait(Duration::from_secs(15));
        assert!(!status.success(), "{url} was accepted: {}", read(&log));
    }
    let refused = syslog.wait_for("refused publish of stream \"cornil\"");
    assert!(refused.contains("a wrong or missing key"), "{refused}");
    syslog.wait_for("refused publish of stream \"nosuchroom\"");
    assert_eq!(
        get(&nginx, &format!("{hls}cornil/index.m3u8")).status,
        404,
        "a refused publish made HLS"
    );
    let log = dir.path().join("ffmpeg-cornil.log");
    let status =
        publish(&nginx, &[(cornil_stream, size.0, size.1)], 3, &log).wait(Duration::from_secs(15));
    assert!(
        status.success(),
        "cornil's own key was refused: {}",
        read(&log)
    );
    for stream in ["lameere", "lameere_240p", "cornil"] {
        syslog.wait_for(&format!("accepted publish of stream \"{stream}\""));
    }

    // The watch pages: the index lists every room, a room's page plays its playlist.
    let index = get(&nginx, &watch_index);
    assert_eq!(
        index.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    for room in rooms {
        let href = format!(
            "href=\"{}{}\"",
            text(&backend["watch_path"]),
            text(&room["slug"])
        );
        assert!(index.body.contains(&href), "{href}: {}", index.body);
    }
    assert!(index.body.contains("IRC #fosdem-lameere on libera"));
    assert!(
        index
            .body
            .contains("&lt;&#36;5 &#92; &quot;quoted&quot;&gt;")
    );
    let page = get(&nginx, &text(&lameere["watch_url"]));
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let player = format!(
        "<video id=\"player\" controls autoplay muted playsinline src=\"{room_url}\"></video>"
    );
    assert!(page.body.contains(&player), "{}", page.body);
    assert!(page.body.contains("<h1>UB2.252A (Lameere)</h1>"));
    assert!(
        page.body
            .contains("https://fosdem.org/2027/schedule/room/ub2252a/")
    );
    let css = get(&nginx, &format!("{watch_index}style.css"));
    assert_eq!(css.header("Content-Type"), Some("text/css"));
    let root = get(&nginx, &format!("http://{address}/"));
    assert_eq!(
        (root.status, root.header("Location")),
        (302, Some("/watch/"))
    );

    // The keys never reach a log.
    let logged = format!("{}{:?}", read(&nginx_log), syslog.lines());
    assert!(
        !logged.contains(LAMEERE_KEY) && !logged.contains(CORNIL_KEY),
        "{logged}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

const FRONTEND_ROLE: &str = "streaming-frontend";
const FRONTEND: &str = "10.99.0.31";

/// The conference of [`MASTER`] with a frontend in front of its backend, which the public URLs name,
/// as the frontends' names would in DNS.
fn frontend_master() -> String {
    let public = MASTER.replace("http://10.99.0.30/", &format!("http://{FRONTEND}/"));
    format!(
        "{public}\n[[servers]]\nhostname = \"stream-frontend\"\nrole = \"streaming-frontend\"\nwhere = \"local-vm\"\nhost = \"control\"\nmac = \"52:54:00:00:02:31\"\nip = \"{FRONTEND}\"\n"
    )
}

#[test]
fn frontend_layers_follow_the_plan_for_every_frontend_of_fosdem_25() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let examples = repo().join("examples");
    let master = dir.path().join("fosdem-25.toml");
    fs::copy(examples.join("fosdem-25.toml"), &master).unwrap();
    let secrets = dir.path().join("fosdem-25.secrets.toml");
    fs::copy(examples.join("fosdem-25.secrets.toml.example"), &secrets).unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    let frontends = render_plan(&Plan::load(&master).unwrap(), FRONTEND_ROLE);
    let names: Vec<&str> = frontends.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stream-frontend-1",
            "stream-frontend-2",
            "stream-frontend-3",
            "stream-frontend-4"
        ]
    );
    for (name, layers) in &frontends {
        assert!(layers.units.iter().any(|u| u == "nginx.service"));
        let (_, drop_in) = file(
            &layers.config,
            "etc/systemd/system/nginx.service.d/lectern.conf",
        );
        assert!(
            drop_in.contains("WantedBy=lectern-role.target\n"),
            "{drop_in}"
        );
        let (_, frame) = file(&layers.config, "etc/nginx/nginx.conf");
        assert!(
            frame.contains("include /etc/lectern/frontend/site.conf;"),
            "{frame}"
        );
        let (_, site) = file(&layers.host, "etc/lectern/frontend/site.conf");
        for line in [
            format!(
                "# {name}: a cache of stream-backend's HLS below /hls/ and its watch pages below /watch/.\n"
            ),
            "    server 185.175.218.2:80;\n".to_owned(),
            "keys_zone=lectern:16m max_size=1634m inactive=90s".to_owned(),
            "    location \"/hls/\" {\n".to_owned(),
            "    location \"/watch/\" {\n".to_owned(),
            "    location = \"/watch\" {\n".to_owned(),
            "        return 404;\n".to_owned(),
        ] {
            assert!(site.contains(&line), "{line:?} not in {name}'s\n{site}");
        }
        // A frontend holds no secret.
        assert_eq!(layers.context["secret_values"], serde_json::json!([]));
    }
}

/// The `X-Cache-Status` of `count` GETs of `url` sent at once from `nginx`'s namespace.
fn cache_statuses_at_once(nginx: &Group, url: &str, count: usize) -> Vec<String> {
    let children: Vec<Child> = (0..count)
        .map(|_| {
            in_netns(nginx, "curl")
                .args(["--silent", "--max-time", "10", "--output", "/dev/null"])
                .args(["--dump-header", "-", url])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut statuses: Vec<String> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            let head = String::from_utf8_lossy(&output.stdout).into_owned();
            (head.lines())
                .find_map(|line| line.strip_prefix("X-Cache-Status: "))
                .unwrap_or("none")
                .to_owned()
        })
        .collect();
    statuses.sort();
    statuses
}

/// The last segment a media playlist lists.
fn newest_segment(playlist: &str) -> String {
    let line = playlist.lines().rev().find(|line| line.ends_with(".ts"));
    line.unwrap_or_else(|| panic!("no segment in {playlist}"))
        .to_owned()
}

#[test]
fn the_frontend_caches_the_backends_hls_and_watch_pages() {
    if !ingest_test_enabled() {
        return;
    }
    let started = Instant::now();
    let master = frontend_master();
    let backend_layers = render_master(&master);
    let mut frontends = render_role(&master, FRONTEND_ROLE);
    assert_eq!(frontends.len(), 1, "one frontend in the plan");
    let (_, frontend_layers) = frontends.pop().unwrap();
    let backend = &backend_layers.context["host"]["config"][ROLE];
    let frontend = &frontend_layers.context["host"]["config"][FRONTEND_ROLE];
    let text = |value: &serde_json::Value| value.as_str().unwrap().to_owned();
    let backend_address = text(&backend_layers.context["host"]["ip"]);
    assert_eq!(text(&frontend["backend_address"]), backend_address);
    let lameere = &backend["rooms"][0];

    let dir = tempfile::tempdir().unwrap();
    let Server {
        nginx: mut origin,
        log: origin_log,
        ..
    } = Server::start(
        &backend_layers,
        dir.path(),
        &backend_address,
        Some(HLS_TMPFILES),
    );
    let Server {
        nginx: mut cache,
        log: cache_log,
        ..
    } = Server::start(&frontend_layers, dir.path(), FRONTEND, None);
    // Both up, each alone: the frontend answers what is not the backend's by itself.
    let watch_path = text(&frontend["watch_path"]);
    let origin_index = format!("http://{backend_address}{watch_path}");
    wait_for_url(&mut origin, &origin_index, Duration::from_secs(10), |r| {
        r.status == 200
    });
    let stray = format!("http://{FRONTEND}/etc/passwd");
    wait_for_url(&mut cache, &stray, Duration::from_secs(10), |r| {
        r.status == 404
    });
    // One link between the two namespaces, made inside them: nothing of this machine's own.
    let net = |nginx: &Group, program: &str, args: &[&str]| {
        let status = in_netns(nginx, program).args(args).status().unwrap();
        assert!(status.success(), "{program} {args:?}");
    };
    let cache_pid = cache.pid().to_string();
    net(
        &origin,
        "ip",
        &[
            "link",
            "add",
            "lectern-vb",
            "type",
            "veth",
            "peer",
            "name",
            "lectern-vf",
            "netns",
            &cache_pid,
        ],
    );
    net(&origin, "ip", &["link", "set", "lectern-vb", "up"]);
    net(
        &origin,
        "ip",
        &["route", "add", FRONTEND, "dev", "lectern-vb"],
    );
    net(&cache, "ip", &["link", "set", "lectern-vf", "up"]);
    net(
        &cache,
        "ip",
        &[
            "route",
            "add",
            &backend_address,
            "dev",
            "lectern-vf",
            "src",
            FRONTEND,
        ],
    );
    let logs = || format!("{}\n{}", read(&origin_log), read(&cache_log));

    // The watch pages come through, and a second fetch is the frontend's own copy.
    let page = get(&cache, &text(&lameere["watch_url"]));
    assert_eq!(page.status, 200, "{}", logs());
    assert_eq!(page.header("X-Cache-Status"), Some("MISS"));
    let room_url = text(&lameere["hls_url"]);
    assert!(room_url.starts_with(&format!("http://{FRONTEND}/")));
    assert!(
        page.body.contains(&format!("src=\"{room_url}\"")),
        "{}",
        page.body
    );
    let again = get(&cache, &text(&lameere["watch_url"]));
    assert_eq!(
        (again.header("X-Cache-Status"), again.body == page.body),
        (Some("HIT"), true)
    );
    let root = get(&cache, &format!("http://{FRONTEND}/"));
    assert_eq!(
        (root.status, root.header("Location")),
        (302, Some("/watch/"))
    );
    // Nothing outside the backend's paths reaches it.
    let stray = get(&cache, &stray);
    assert_eq!((stray.status, stray.header("X-Cache-Status")), (404, None));

    // Lameere streams to the backend; players read it from the frontend.
    let renditions: Vec<(String, u64, u64)> = (lameere["renditions"].as_array().unwrap().iter())
        .map(|r| {
            let push = text(&r["push_url"]);
            (
                push,
                r["width"].as_u64().unwrap(),
                r["height"].as_u64().unwrap(),
            )
        })
        .collect();
    let _encoder = publish(
        &origin,
        &renditions,
        0,
        &dir.path().join("ffmpeg-lameere.log"),
    );
    let hls = format!("http://{FRONTEND}{}", text(&frontend["hls_path"]));
    let media = format!("{hls}lameere/index.m3u8");
    wait_for_url(&mut cache, &media, Duration::from_secs(20), |r| {
        r.status == 200 && r.body.matches("#EXTINF:").count() >= 2
    });

    // A playlist is held for a second: asked again at once it is the frontend's copy (the backend's
    // no-cache passed on to players), two and a half seconds later it is fetched anew.
    let mut held = None;
    for _ in 0..5 {
        let first = get(&cache, &media);
        let second = get(&cache, &media);
        if second.header("X-Cache-Status") == Some("HIT") {
            held = Some((first, second));
            break;
        }
    }
    let (first, second) = held.expect("no playlist fetched twice within its second was a HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(
        (
            second.header("Content-Type"),
            second.header("Cache-Control"),
            second.header("Access-Control-Allow-Origin")
        ),
        (
            Some("application/vnd.apple.mpegurl"),
            Some("no-cache"),
            Some("*")
        )
    );
    std::thread::sleep(Duration::from_millis(2500));
    let later = get(&cache, &media);
    assert_eq!(later.status, 200);
    assert_ne!(
        later.header("X-Cache-Status"),
        Some("HIT"),
        "a playlist held for 2.5 s"
    );

    // A segment is fetched from the backend once, however many players ask for it while it comes
    // (proxy_cache_lock), and then served from the cache. The backend's side of the link is slowed to
    // 1 Mbit/s, so that the segment (over 100 kB) takes a second to come and all six ask meanwhile.
    let segment = format!("{hls}lameere/{}", newest_segment(&later.body));
    let slow = [
        "qdisc",
        "add",
        "dev",
        "lectern-vb",
        "root",
        "tbf",
        "rate",
        "1mbit",
    ];
    net(
        &origin,
        "tc",
        &[&slow[..], &["burst", "16k", "latency", "10s"]].concat(),
    );
    let statuses = cache_statuses_at_once(&cache, &segment, 6);
    net(
        &origin,
        "tc",
        &["qdisc", "del", "dev", "lectern-vb", "root"],
    );
    assert_eq!(
        statuses,
        ["HIT", "HIT", "HIT", "HIT", "HIT", "MISS"],
        "{}",
        logs()
    );
    let cached = get(&cache, &segment);
    assert_eq!(
        (cached.status, cached.header("Content-Type")),
        (200, Some("video/mp2t"))
    );
    let direct = get(&origin, &segment.replace(FRONTEND, &backend_address));
    assert_eq!(
        cached.body, direct.body,
        "the cache holds the backend's bytes"
    );

    // The room's playlist of every rendition, followed through the frontend, decodes.
    assert_eq!(
        streams_decoded(&cache, &room_url),
        ["aac", "h264 426x240", "h264 640x360"]
    );

    // With the backend cut off, what the frontend holds is still served.
    net(&origin, "ip", &["link", "set", "lectern-vb", "down"]);
    let cut_off = get(&cache, &segment);
    assert_eq!(
        (cut_off.status, cut_off.header("X-Cache-Status")),
        (200, Some("HIT"))
    );
    assert_eq!(cut_off.body, direct.body);
    assert!(!origin.exited() && !cache.exited(), "{}", logs());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
