//! A tired volunteer's typos and mix-ups, each with the exact message lectern must give: file,
//! line, column, field, what is wrong and how to fix it, every problem of a file at once.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lectern_master::secrets::Secrets;

const EXAMPLE: &str = include_str!("../../examples/master.toml");
const SECRETS: &str = include_str!("../../examples/secrets.toml.example");

/// The example with each `(from, to)` edit applied to the first occurrence of `from`, checked
/// with the example secrets (from a private file).
fn errors_of(edits: &[(&str, &str)]) -> String {
    let mut text = EXAMPLE.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "the example has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, SECRETS).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    match lectern_master::load_from(Path::new("master.toml"), &text, |_| Secrets::load(&secrets)) {
        Ok(_) => "no errors".into(),
        Err(problems) => problems.to_string(),
    }
}

struct Case {
    name: &'static str,
    edits: &'static [(&'static str, &'static str)],
    expected: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "an identity that is not a UUID",
        edits: &[(
            "uuid = \"2cf95bbc-8157-4255-8320-3c91938cdcb7\"",
            "uuid = \"2cf95bbc-8157-4255-8320\"",
        )],
        expected: r#"error: master.toml:89:21: machines[lameere-mixer].identity.uuid: "2cf95bbc-8157-4255-8320" is not a UUID (8-4-4-4-12 hexadecimal digits)
   |
89 | identity = { uuid = "2cf95bbc-8157-4255-8320" }
   |                     ^^^^^^^^^^^^^^^^^^^^^^^^^

1 error found"#,
    },
    Case {
        name: "two hosts with one UUID, and a serial with a space at its end",
        edits: &[
            (
                "uuid = \"f09a37a1-1517-4484-85bd-87feaec2e85c\"",
                "uuid = \"2CF95BBC-8157-4255-8320-3C91938CDCB7\"",
            ),
            (
                "uuid = \"8e99f066-55bb-4fb7-8fc9-d750c80b7f23\"",
                "serial = \"SN 1 \"",
            ),
        ],
        expected: r#"error: master.toml:116:21: machines[cornil-mixer].identity.uuid: this uuid is already lameere-mixer's identity (line 86): two machines cannot both be one
    |
116 | identity = { uuid = "2CF95BBC-8157-4255-8320-3C91938CDCB7" }
    |                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

error: master.toml:168:23: servers[stream-backend].identity.serial: "SN 1 " is not an SMBIOS string lectern can compare: 1 to 64 printable ASCII characters, no space at either end
    |
168 | identity = { serial = "SN 1 " }
    |                       ^^^^^^^

2 errors found"#,
    },
    Case {
        name: "a TPM key Name cut short, and a TPM on a local VM",
        edits: &[
            (
                "uuid = \"2cf95bbc-8157-4255-8320-3c91938cdcb7\"",
                "uuid = \"2cf95bbc-8157-4255-8320-3c91938cdcb7\", tpm_ek = \"000b29aeca4f\"",
            ),
            (
                "uuid = \"6b32cba2-3e57-44e6-8d83-8736ff589cf7\"",
                "tpm_ek = \"000b29aeca4fd2d0de87d60b5f7f59fb57a9a35866142ef07387683be71c747dc4cd\"",
            ),
        ],
        expected: r#"error: master.toml:89:70: machines[lameere-mixer].identity.tpm_ek: "000b29aeca4f" is not a TPM key Name: "000b" (SHA-256) and 64 hexadecimal digits
   |
89 | identity = { uuid = "2cf95bbc-8157-4255-8320-3c91938cdcb7", tpm_ek = "000b29aeca4f" }
   |                                                                      ^^^^^^^^^^^^^^
  help: copy the `name:` that `tpm2_readpublic -c ek.ctx` prints

error: master.toml:147:23: encoders[cornil-enc].identity.tpm_ek: cornil-enc is a local VM: its TPM would be a file on this server, not a key its own machine holds
    |
147 | identity = { tpm_ek = "000b29aeca4fd2d0de87d60b5f7f59fb57a9a35866142ef07387683be71c747dc4cd" }
    |                       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  help: bind a local VM by its SMBIOS uuid, which `netbootd vms` gives it

2 errors found"#,
    },
    Case {
        name: "beside a venue's DHCP, a host with secrets and nothing that proves it",
        edits: &[
            ("mode = \"authoritative\"", "mode = \"proxy\""),
            ("range = [\"10.42.0.200\", \"10.42.0.250\"]\n", ""),
            (
                "identity = { uuid = \"6b32cba2-3e57-44e6-8d83-8736ff589cf7\" }\nip = \"10.42.0.23\"\n",
                "",
            ),
        ],
        expected: r#"error: master.toml:138:1: encoders[cornil-enc]: cornil-enc has secrets (1) but neither a reserved `ip` nor an `identity`: beside the venue's DHCP nothing proves which machine is cornil-enc, so netbootd never releases them
    |
138 | [[encoders]]
    | ^^^^^^^^^^^^
  help: add identity = { uuid = "…" } (its SMBIOS system UUID), or the address the venue reserved for it

1 error found"#,
    },
    Case {
        name: "a time zone without its area",
        edits: &[("timezone = \"Europe/Brussels\"", "timezone = \"Brussels\"")],
        expected: r#"error: master.toml:11:12: conference.timezone: "Brussels" is not a known time zone
   |
11 | timezone = "Brussels"
   |            ^^^^^^^^^^
  help: write an IANA zone like "Europe/Brussels", or "UTC" (`timedatectl list-timezones` lists them)

1 error found"#,
    },
    Case {
        name: "a streaming backend with an ingest it does not take",
        edits: &[
            ("ingest = \"rtmp\"", "ingest = \"srt\""),
            ("rtmp://stream-backend", "srt://stream-backend"),
        ],
        expected: r#"error: master.toml:15:10: streaming.ingest: the streaming-backend role ingests rtmp, but ingest = "srt"
   |
15 | ingest = "srt"
   |          ^^^^^
  help: use ingest = "rtmp", or remove the streaming-backend server and run your own ingest

1 error found"#,
    },
    Case {
        name: "a streaming frontend with no backend to cache",
        edits: &[(
            "role = \"streaming-backend\"",
            "role = \"streaming-frontend\"",
        )],
        expected: r#"error: master.toml:162:8: servers[stream-backend].role: a streaming-frontend caches the file's one streaming-backend, and the file has none
    |
162 | role = "streaming-frontend"
    |        ^^^^^^^^^^^^^^^^^^^^
  help: add the [[servers]] entry with role = "streaming-backend" it caches, or remove the frontend

1 error found"#,
    },
    Case {
        name: "a cloud encoder without a contribution passphrase",
        edits: &[(
            "contribution_passphrase = \"secret:contribution.lameere\"\n",
            "",
        )],
        expected: r#"error: master.toml:59:1: rooms[lameere]: room "lameere" has a cloud encoder but no `contribution_passphrase`: its feed would cross the internet unencrypted
   |
59 | [[rooms]]
   | ^^^^^^^^^
  help: add contribution_passphrase = "secret:contribution.lameere" and 10 to 79 characters of it to the secrets file

1 error found"#,
    },
    Case {
        name: "an x264 preset for a room that encodes with VAAPI",
        edits: &[
            (
                "hwaccel = \"none\"",
                "hwaccel = \"none\"\npreset = \"ultrafast\"",
            ),
            (
                "encode = { video_kbps = 2000 }",
                "encode = { video_kbps = 2000, hwaccel = \"vaapi\" }",
            ),
        ],
        expected: r#"error: master.toml:50:10: defaults.encode.preset: preset = "ultrafast" tunes x264, but room cornil encodes with VAAPI (hwaccel = "vaapi")
   |
50 | preset = "ultrafast"
   |          ^^^^^^^^^^^
  help: remove preset

1 error found"#,
    },
    Case {
        name: "a variant as tall as the picture",
        edits: &[(
            "name = \"480p\", height = 480",
            "name = \"1080p\", height = 1080",
        )],
        expected: r#"error: master.toml:54:40: defaults.encode.variants[1080p].height: a variant of room "cornil" must be an even height below its 720-line picture, not 1080
   |
54 | variants = [{ name = "1080p", height = 1080, video_kbps = 500 }]
   |                                        ^^^^

error: master.toml:54:40: defaults.encode.variants[1080p].height: a variant of room "lameere" must be an even height below its 1080-line picture, not 1080
   |
54 | variants = [{ name = "1080p", height = 1080, video_kbps = 500 }]
   |                                        ^^^^

2 errors found"#,
    },
    Case {
        name: "unknown key beside shared deployment fields",
        edits: &[("vcpus = 4", "vcpu = 4")],
        expected: r#"error: master.toml:144:1: encoders[cornil-enc].vcpu: unknown key `vcpu` in encoders[cornil-enc]
    |
144 | vcpu = 4
    | ^^^^
  help: did you mean `vcpus`?

1 error found"#,
    },
    Case {
        name: "unknown key",
        edits: &[("record_disk = \"/dev/sdb\"", "record_dsk = \"/dev/sdb\"")],
        expected: r#"error: master.toml:93:1: machines[lameere-mixer].record_dsk: unknown key `record_dsk` in machines[lameere-mixer]
   |
93 | record_dsk = "/dev/sdb"
   | ^^^^^^^^^^
  help: did you mean `record_disk`?

1 error found"#,
    },
    Case {
        name: "malformed mac",
        edits: &[("mac = \"52:54:00:42:01:11\"", "mac = \"52:54:00:42:01\"")],
        expected: r#"error: master.toml:97:7: machines[lameere-source-1].mac: "52:54:00:42:01" is not a MAC address
   |
97 | mac = "52:54:00:42:01"
   |       ^^^^^^^^^^^^^^^^
  help: write six hex pairs separated by colons, like 8c:16:45:00:e6:f6

1 error found"#,
    },
    Case {
        name: "duplicate mac",
        edits: &[("mac = \"52:54:00:42:01:12\"", "mac = \"52:54:00:42:01:11\"")],
        expected: r#"error: master.toml:106:7: machines[lameere-source-2].mac: MAC 52:54:00:42:01:11 is already used on line 95
    |
106 | mac = "52:54:00:42:01:11"
    |       ^^^^^^^^^^^^^^^^^^^
  help: two hosts cannot share one network card

1 error found"#,
    },
    Case {
        name: "duplicate hostname",
        edits: &[(
            "hostname = \"cornil-source-2\"",
            "hostname = \"cornil-source-1\"",
        )],
        expected: r#"error: master.toml:131:12: machines[cornil-source-1].hostname: host name "cornil-source-1" is already used on line 121
    |
131 | hostname = "cornil-source-1"
    |            ^^^^^^^^^^^^^^^^^
  help: every host needs its own name

1 error found"#,
    },
    Case {
        name: "duplicate ip",
        edits: &[("ip = \"10.42.0.12\"", "ip = \"10.42.0.11\"")],
        expected: r#"error: master.toml:107:6: machines[lameere-source-2].ip: address 10.42.0.11 is already used on line 95
    |
107 | ip = "10.42.0.11"
    |      ^^^^^^^^^^^^

1 error found"#,
    },
    Case {
        name: "ip outside subnet",
        edits: &[("ip = \"10.42.0.12\"", "ip = \"10.43.0.12\"")],
        expected: r#"error: master.toml:107:6: machines[lameere-source-2].ip: 10.43.0.12 is outside the subnet 10.42.0.0/24
    |
107 | ip = "10.43.0.12"
    |      ^^^^^^^^^^^^

1 error found"#,
    },
    Case {
        name: "reservation in range",
        edits: &[("ip = \"10.42.0.12\"", "ip = \"10.42.0.210\"")],
        expected: r#"error: master.toml:107:6: machines[lameere-source-2].ip: 10.42.0.210 is inside the dynamic range 10.42.0.200–10.42.0.250
    |
107 | ip = "10.42.0.210"
    |      ^^^^^^^^^^^^^
  help: a fixed address must not be handed out to another machine: pick one outside the range, or shrink the range

1 error found"#,
    },
    Case {
        name: "room without mixer",
        edits: &[(
            "room = \"lameere\"\nrecord_disk",
            "room = \"cornil\"\nrecord_disk",
        )],
        expected: r#"error: master.toml:59:1: rooms[lameere]: room "lameere" has no mixer
   |
59 | [[rooms]]
   | ^^^^^^^^^
  help: add a [[machines]] entry with role = "mixer" and room = "lameere"

error: master.toml:70:1: rooms[cornil]: room "cornil" has more than one mixer (lameere-mixer and cornil-mixer)
   |
70 | [[rooms]]
   | ^^^^^^^^^

2 errors found"#,
    },
    Case {
        name: "unknown source",
        edits: &[("source = \"slides\"", "source = \"slide\"")],
        expected: r#"error: master.toml:64:19: rooms[lameere].sources[#2]: no machine captures source "slides" of room "lameere"
   |
64 | sources = ["cam", "slides"]   # mixer ports 10000, 10001
   |                   ^^^^^^^^
  help: add a [[machines]] entry with role = "source", room = "lameere", source = "slides"

error: master.toml:110:10: machines[lameere-source-2].source: there is no source "slide" in room "lameere"
    |
110 | source = "slide"
    |          ^^^^^^^
  help: did you mean "slides"?

2 errors found"#,
    },
    Case {
        name: "unresolved secret",
        edits: &[("secret:stream_keys.cornil", "secret:stream_keys.corni")],
        expected: r#"error: master.toml:77:14: rooms[cornil].stream_key: `secret:stream_keys.corni` is not a string in the secrets file
   |
77 | stream_key = "secret:stream_keys.corni"
   |              ^^^^^^^^^^^^^^^^^^^^^^^^^^
  help: add `corni = "…"` under `[stream_keys]` in ./secrets.toml

1 error found"#,
    },
    Case {
        name: "unknown room",
        edits: &[("room = \"cornil\"", "room = \"cornill\"")],
        expected: r#"error: master.toml:70:1: rooms[cornil]: room "cornil" has no mixer
   |
70 | [[rooms]]
   | ^^^^^^^^^
  help: add a [[machines]] entry with role = "mixer" and room = "cornil"

error: master.toml:119:8: machines[cornil-mixer].room: there is no room "cornill"
    |
119 | room = "cornill"
    |        ^^^^^^^^^
  help: did you mean "cornil"?

2 errors found"#,
    },
    Case {
        name: "wrong type",
        edits: &[("vcpus = 4", "vcpus = \"4\"")],
        expected: r#"error: master.toml:144:9: encoders[cornil-enc].vcpus: expected a whole number, found a string
    |
144 | vcpus = "4"
    |         ^^^

1 error found"#,
    },
    Case {
        name: "bad choice",
        edits: &[("mode = \"authoritative\"", "mode = \"authoritive\"")],
        expected: r#"error: master.toml:28:8: network.dhcp.mode: "authoritive" is not one of "authoritative", "proxy"
   |
28 | mode = "authoritive"        # or "proxy" beside a venue's DHCP server
   |        ^^^^^^^^^^^^^
  help: did you mean "authoritative"?

1 error found"#,
    },
    Case {
        name: "syntax",
        edits: &[("name = \"FOSDEM 2027\"", "name = \"FOSDEM 2027")],
        expected: r#"error: master.toml:6:20: this is not valid TOML: invalid basic string, expected `"`
  |
6 | name = "FOSDEM 2027
  |                    ^
  help: check quotes, brackets and `=` on this line

1 error found"#,
    },
    Case {
        name: "missing key",
        edits: &[("name = \"FOSDEM 2027\"\n", "")],
        expected: r#"error: master.toml:5:1: conference: conference is missing the required key `name`
  |
5 | [conference]
  | ^
  help: `name`: Display name, e.g. "FOSDEM 2027".

1 error found"#,
    },
    Case {
        name: "literal secret",
        edits: &[(
            "stream_key = \"secret:stream_keys.lameere\"",
            "stream_key = \"hunter2\"",
        )],
        expected: r#"error: master.toml:66:14: rooms[lameere].stream_key: secrets may not be written in the master file
  help: move the value into ./secrets.toml and write a reference here, like "secret:stream_keys.<room>"

1 error found"#,
    },
    Case {
        name: "gateway outside",
        edits: &[("gateway = \"10.42.0.254\"", "gateway = \"10.0.0.254\"")],
        expected: r#"error: master.toml:24:11: network.gateway: 10.0.0.254 is outside the subnet 10.42.0.0/24
   |
24 | gateway = "10.0.0.254"
   |           ^^^^^^^^^^^^

1 error found"#,
    },
    Case {
        name: "bad subnet",
        edits: &[("subnet = \"10.42.0.0/24\"", "subnet = \"10.42.0.0/33\"")],
        expected: r#"error: master.toml:23:10: network.subnet: "10.42.0.0/33" is not a subnet in CIDR notation
   |
23 | subnet = "10.42.0.0/33"
   |          ^^^^^^^^^^^^^^
  help: write the network address and prefix length, like "10.42.0.0/24"

1 error found"#,
    },
    Case {
        name: "audio source",
        edits: &[("audio_source = \"cam\"", "audio_source = \"camera\"")],
        expected: r#"error: master.toml:65:16: rooms[lameere].audio_source: there is no source "camera"
   |
65 | audio_source = "camera"
   |                ^^^^^^^^
  help: did you mean "cam"?

1 error found"#,
    },
    Case {
        name: "ec2 without region",
        edits: &[(
            "region = \"eu-west-1\"\ninstance_type = \"c6i.xlarge\"",
            "instance_type = \"c6i.xlarge\"",
        )],
        expected: r#"error: master.toml:150:1: encoders[lameere-enc]: an ec2 host needs `region`
    |
150 | [[encoders]]
    | ^^^^^^^^^^^^

1 error found"#,
    },
    Case {
        name: "bad lease",
        edits: &[("lease = \"6h\"", "lease = \"6 hours\"")],
        expected: r#"error: master.toml:31:9: network.dhcp.lease: "6 hours" is not a lease time of at least a minute
   |
31 | lease = "6 hours"
   |         ^^^^^^^^^
  help: write a number followed by s, m, h or d, like "6h"

1 error found"#,
    },
    Case {
        name: "bad hostname",
        edits: &[(
            "hostname = \"lameere-mixer\"",
            "hostname = \"Lameere_Mixer\"",
        )],
        expected: r#"error: master.toml:87:12: machines[Lameere_Mixer].hostname: "Lameere_Mixer" is not a valid name
   |
87 | hostname = "Lameere_Mixer"
   |            ^^^^^^^^^^^^^^^
  help: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'

1 error found"#,
    },
    Case {
        name: "proxy with range",
        edits: &[("mode = \"authoritative\"", "mode = \"proxy\"")],
        expected: r#"error: master.toml:30:9: network.dhcp.range: a dynamic range makes no sense in proxy mode: the venue DHCP gives the addresses
   |
30 | range = ["10.42.0.200", "10.42.0.250"]
   |         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  help: remove `range`, or set mode = "authoritative"

1 error found"#,
    },
    Case {
        name: "port out of range",
        edits: &[("http_port = 8080", "http_port = 80800")],
        expected: r#"error: master.toml:34:13: netboot.http_port: 80800 is out of range (allowed: 1 to 65535)
   |
34 | http_port = 80800
   |             ^^^^^

1 error found"#,
    },
    Case {
        name: "the journal receiver on netbootd's HTTPS port",
        edits: &[("http_port = 8080", "http_port = 8080\njournal_port = 8443")],
        expected: r#"error: master.toml:35:16: netboot.journal_port: port 8443 is netbootd's HTTPS port already: the journal receiver needs one of its own
   |
35 | journal_port = 8443
   |                ^^^^

1 error found"#,
    },
    Case {
        name: "a frame rate of zero",
        edits: &[("framerate = 30", "framerate = 0")],
        expected: r#"error: master.toml:44:13: defaults.video.framerate: 0 is out of range (allowed: 1 to 4294967295)
   |
44 | framerate = 0
   |             ^

1 error found"#,
    },
    Case {
        name: "port zero",
        edits: &[("http_port = 8080", "http_port = 0")],
        expected: r#"error: master.toml:34:13: netboot.http_port: 0 is out of range (allowed: 1 to 65535)
   |
34 | http_port = 0
   |             ^

1 error found"#,
    },
    Case {
        name: "an all-zero MAC",
        edits: &[("mac = \"52:54:00:42:01:10\"", "mac = \"00:00:00:00:00:00\"")],
        expected: r#"error: master.toml:88:7: machines[lameere-mixer].mac: "00:00:00:00:00:00" is all zeros, not a machine's
   |
88 | mac = "00:00:00:00:00:00"
   |       ^^^^^^^^^^^^^^^^^^^
  help: copy the MAC from the machine's label or `ip link`

1 error found"#,
    },
    Case {
        name: "an interface name the kernel cannot hold",
        edits: &[(
            "interface = \"lectern0\"",
            "interface = \"lectern-video-lan0\"",
        )],
        expected: r#"error: master.toml:29:13: network.dhcp.interface: "lectern-video-lan0" is not a Linux interface name: longer than the kernel's 15 characters
   |
29 | interface = "lectern-video-lan0"
   |             ^^^^^^^^^^^^^^^^^^^^
  help: copy it from `ip link`, e.g. "enp1s0"

1 error found"#,
    },
    Case {
        name: "a domain that is not a DNS name",
        edits: &[(
            "domain = \"video.example.org\"",
            "domain = \"video_lan..example.org\"",
        )],
        expected: r#"error: master.toml:22:10: network.domain: "video_lan..example.org" is not a DNS domain: a label holds something other than letters, digits and '-'
   |
22 | domain = "video_lan..example.org"
   |          ^^^^^^^^^^^^^^^^^^^^^^^^
  help: write labels of letters, digits and '-' joined by dots, like "video.example.org"

1 error found"#,
    },
    Case {
        name: "a host name too long for DNS with the domain",
        edits: &[(
            "domain = \"video.example.org\"",
            "domain = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc.dddddddddddddddddddddddddddddddddddddddddddddddddddddd\"",
        )],
        expected: r#"error: master.toml:96:12: machines[lameere-source-1].hostname: lameere-source-1.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc.dddddddddddddddddddddddddddddddddddddddddddddddddddddd is 254 characters long, more than a DNS name may be (253)
   |
96 | hostname = "lameere-source-1"
   |            ^^^^^^^^^^^^^^^^^^
  help: shorten the host name or network.domain

error: master.toml:105:12: machines[lameere-source-2].hostname: lameere-source-2.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc.dddddddddddddddddddddddddddddddddddddddddddddddddddddd is 254 characters long, more than a DNS name may be (253)
    |
105 | hostname = "lameere-source-2"
    |            ^^^^^^^^^^^^^^^^^^
  help: shorten the host name or network.domain

2 errors found"#,
    },
    Case {
        name: "many at once",
        edits: &[
            ("mac = \"52:54:00:42:01:11\"", "mac = \"52:54:00:42:01\""),
            ("vcpus = 4", "vcpus = \"4\""),
            ("record_disk", "recording_disk"),
        ],
        expected: r#"error: master.toml:93:1: machines[lameere-mixer].recording_disk: unknown key `recording_disk` in machines[lameere-mixer]
   |
93 | recording_disk = "/dev/sdb"
   | ^^^^^^^^^^^^^^
  help: did you mean `record_disk`?

error: master.toml:97:7: machines[lameere-source-1].mac: "52:54:00:42:01" is not a MAC address
   |
97 | mac = "52:54:00:42:01"
   |       ^^^^^^^^^^^^^^^^
  help: write six hex pairs separated by colons, like 8c:16:45:00:e6:f6

error: master.toml:144:9: encoders[cornil-enc].vcpus: expected a whole number, found a string
    |
144 | vcpus = "4"
    |         ^^^

3 errors found"#,
    },
    Case {
        name: "fields of another placement, and a cloud encoder without its instance profile",
        edits: &[
            ("instance_profile = \"lectern-encoder\"\n", "vcpus = 8\n"),
            (
                "vcpus = 4\nmemory_mb = 4096\nmac = \"52:54:00:42:02:20\"",
                "region = \"eu-west-1\"\nmemory_mb = 4096\nmac = \"52:54:00:42:02:20\"",
            ),
        ],
        expected: r#"error: master.toml:144:10: encoders[cornil-enc].region: `region` is for `where = "ec2"` hosts; this one is `local-vm`
    |
144 | region = "eu-west-1"
    |          ^^^^^^^^^^^

error: master.toml:150:1: encoders[lameere-enc]: an ec2 host needs `instance_profile`
    |
150 | [[encoders]]
    | ^^^^^^^^^^^^

error: master.toml:156:9: encoders[lameere-enc].vcpus: `vcpus` is for `where = "local-vm"` hosts; this one is `ec2`
    |
156 | vcpus = 8
    |         ^

3 errors found"#,
    },
];

#[test]
fn each_broken_file_gets_its_exact_message() {
    let mut failures = Vec::new();
    for case in CASES {
        let actual = errors_of(case.edits);
        if actual != case.expected {
            failures.push(format!(
                "--- {}\nexpected:\n{}\nactual:\n{}\n",
                case.name, case.expected, actual
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_misspelt_time_zone_is_checked_against_tzdata() {
    if !Path::new("/usr/share/zoneinfo/Europe/Brussels").is_file() {
        eprintln!("skipping: no tzdata here (apt-get install tzdata)");
        return;
    }
    assert_eq!(
        errors_of(&[("\"Europe/Brussels\"", "\"Europe/Brusels\"")]),
        r#"error: master.toml:11:12: conference.timezone: "Europe/Brusels" is not a known time zone
   |
11 | timezone = "Europe/Brusels"
   |            ^^^^^^^^^^^^^^^^
  help: did you mean "Europe/Brussels"?

1 error found"#
    );
}

#[test]
fn a_secrets_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, SECRETS).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let master = dir.path().join("master.toml");
    std::fs::write(&master, EXAMPLE).unwrap();
    let problems = lectern_master::load(&master).unwrap_err().to_string();
    let path = secrets.display();
    assert_eq!(
        problems,
        format!(
            "error: {path}: the secrets file is readable by group or others (mode 0644); refusing to use it\n  help: run: chmod 600 {path}\n\n1 error found"
        )
    );
}

#[test]
fn a_missing_secrets_file_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.toml");
    std::fs::write(&master, EXAMPLE).unwrap();
    let problems = lectern_master::load(&master).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems}");
    assert!(
        problems
            .to_string()
            .contains("cannot read the secrets file"),
        "{problems}"
    );
}

#[test]
fn a_broken_secrets_file_names_line_and_key_but_never_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.toml");
    std::fs::write(&master, EXAMPLE).unwrap();
    let secrets = dir.path().join("secrets.toml");
    let path = secrets.display().to_string();
    for (broken, expected) in [
        // A duplicate key: the second value must not be echoed.
        (
            format!("{SECRETS}lameere = \"the-second-key-9f8e\"\n"),
            "at key lameere",
        ),
        // An unterminated string: the parser would quote it.
        (
            SECRETS.replace(
                "cornil = \"example-key-cornil-b81e07\"",
                "cornil = \"example-key-cornil-b81e07",
            ),
            "at key cornil",
        ),
    ] {
        std::fs::write(&secrets, &broken).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let problems = lectern_master::load(&master).unwrap_err().to_string();
        assert!(
            problems.starts_with(&format!("error: {path}:"))
                && problems.contains("this is not a valid secrets file")
                && problems.contains(expected),
            "{problems}"
        );
        for value in [
            "the-second-key-9f8e",
            "example-key-cornil-b81e07",
            "example-key-lameere",
        ] {
            assert!(
                !problems.contains(value),
                "a secret in the message: {problems}"
            );
        }
    }
}
