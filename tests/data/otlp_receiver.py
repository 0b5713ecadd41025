"""An OTLP/HTTP metrics receiver for xcover's tests.

Listens on 127.0.0.1 (port 0: the kernel picks one), prints "listening <port>", then for each
POST to /v1/metrics decodes the body with the official OpenTelemetry definitions
(opentelemetry-proto's ExportMetricsServiceRequest; JSON bodies through protobuf's
json_format.Parse, which rejects anything the OTLP JSON mapping does not allow, protobuf
bodies through ParseFromString) and prints one JSON line: the resource attributes, and per
metric its kind and data points (attributes and value). Answers 200 with an empty
ExportMetricsServiceResponse. Ends after --max-seconds.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def summary(req):
    out = []
    for rm in req.resource_metrics:
        metrics = {}
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                points = []
                for p in data.data_points:
                    v = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                    points.append({"attributes": attrs(p.attributes), "value": v,
                                   "start": p.start_time_unix_nano, "time": p.time_unix_nano})
                entry = {"kind": kind, "points": points}
                if kind == "sum":
                    entry["monotonic"] = data.is_monotonic
                    entry["temporality"] = data.aggregation_temporality
                metrics[m.name] = entry
        out.append({"resource": attrs(rm.resource.attributes), "metrics": metrics})
    return out


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        req = ExportMetricsServiceRequest()
        ctype = self.headers.get("Content-Type", "")
        try:
            if ctype.startswith("application/json"):
                json_format.Parse(body.decode("utf-8"), req)
            else:
                req.ParseFromString(body)
        except Exception as e:  # a body the definitions reject fails the test
            print(json.dumps({"error": str(e), "path": self.path}), flush=True)
            self.send_response(400)
            self.end_headers()
            return
        print(json.dumps({"path": self.path, "content_type": ctype,
                          "resources": summary(req)}), flush=True)
        answer = json_format.MessageToJson(ExportMetricsServiceResponse()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    limit = float(sys.argv[sys.argv.index("--max-seconds") + 1]) if "--max-seconds" in sys.argv else 120
    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    threading.Timer(limit, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
