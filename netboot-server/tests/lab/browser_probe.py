"""Loads a page in headless Chromium and reports what it shows, through the DevTools protocol
(stdlib only: a minimal WebSocket client). Usage: browser_probe.py URL SECONDS SCREENSHOT.png
Prints one JSON object: the page title, the text of the page, its <video>'s readyState and error,
and, sampled every second, the video's currentTime ("times") and the page's text ("texts").
Shared by the netns tests (the fleet dashboard) and the VM tests (the watch page)."""
import base64, json, os, socket, struct, subprocess, sys, tempfile, time, urllib.request

url, seconds, screenshot = sys.argv[1], float(sys.argv[2]), sys.argv[3]
profile = tempfile.mkdtemp(prefix="lectern-chromium-")
port = 9333
chrome = subprocess.Popen(
    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
     "--autoplay-policy=no-user-gesture-required", f"--remote-debugging-port={port}",
     f"--user-data-dir={profile}", "--window-size=1280,800", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Ws:
    def __init__(self, ws_url):
        host_port, path = ws_url[len("ws://"):].split("/", 1)
        host, p = host_port.split(":")
        self.s = socket.create_connection((host, int(p)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.s.recv(1)
        self.next_id = 0

    def _recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.s.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def send(self, obj):
        data = json.dumps(obj).encode()
        header = bytes([0x81])
        n = len(data)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            message += self._recv_exact(n)
            if b0 & 0x80:
                return json.loads(message)

    def call(self, method, **params):
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params})
        while True:
            reply = self.recv()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})


try:
    deadline = time.time() + 30
    while True:
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
            page = next(t for t in targets if t["type"] == "page")
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.3)
    ws = Ws(page["webSocketDebuggerUrl"])
    ws.call("Page.enable")
    ws.call("Page.navigate", url=url)
    samples = []
    texts = []
    state = {}
    for _ in range(int(seconds)):
        time.sleep(1)
        result = ws.call("Runtime.evaluate", returnByValue=True, expression="""(() => {
            const v = document.querySelector('video');
            return {title: document.title, text: document.body ? document.body.innerText : '',
                    time: v ? v.currentTime : null, ready: v ? v.readyState : null,
                    error: v && v.error ? v.error.code + ' ' + v.error.message : null,
                    canplay: v ? v.canPlayType('application/vnd.apple.mpegurl') : null};
        })()""")
        state = result["result"]["value"]
        samples.append(state["time"])
        texts.append(state["text"])
    shot = ws.call("Page.captureScreenshot", format="png")
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    state["times"] = samples
    state["texts"] = texts
    print(json.dumps(state))
finally:
    chrome.kill()
    chrome.wait()
