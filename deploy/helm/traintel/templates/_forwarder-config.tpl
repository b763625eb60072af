{{/* The first tier's pipeline (the per-node agent or the in-pod sidecar): OTLP in from the
     training processes, span metrics computed here, everything forwarded to the gateway.

     Span metrics are computed in the first tier because every span of one rank passes through
     the same agent or sidecar: a connector there keeps one consistent cumulative series per rank
     and span name, where gateway replicas would each count a share under identical labels.
     Call with (dict "root" $ "listen" "0.0.0.0"). */}}
{{- define "traintel.forwarderConfig" -}}
{{- $c := .root.Values.collector -}}
{{- $p := .root.Files.Get "files/collector/forwarder.yaml" | fromYaml -}}
{{- $gateway := include "traintel.gatewayRendered" .root -}}
{{- $scrape := eq $c.metricsMode "scrape" -}}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {{ .listen }}:4317
      http:
        endpoint: {{ .listen }}:4318
# processors, connectors and their order: files/collector/forwarder.yaml, generated from
# otel-collector/config.yaml (`make generate`).
processors:
  {{- toYaml $p.processors | nindent 2 }}
connectors:
  {{- toYaml $p.connectors | nindent 2 }}
exporters:
  {{- if $scrape }}
  # Served on 8889 for the PodMonitor (collector.metricsMode: scrape): each rank's series come
  # through its own node's agent, so exactly one target serves them.
  prometheus:
    {{- toYaml $p.exporters.prometheus | nindent 4 }}
  {{- end }}
  {{- if $gateway }}
  otlp_grpc/gateway:
    endpoint: {{ include "traintel.gatewayEndpoint" .root }}
    tls:
      insecure: true
    sending_queue:
      enabled: true
      queue_size: 5000
    retry_on_failure:
      enabled: true
      max_elapsed_time: 10m
  {{- end }}
  {{- if not $c.loki.enabled }}
  # Logs are not stored (collector.loki.enabled is false): count them here and drop them, so that
  # the runs' exporters are not answered with errors.
  debug/drop:
    verbosity: basic
    sampling_initial: 1
    sampling_thereafter: 10000
  {{- end }}
extensions:
  health_check:
    endpoint: {{ .listen }}:13133
service:
  extensions: [health_check]
  {{- include "traintel.collectorTelemetry" . | nindent 2 }}
  pipelines:
    metrics:
      receivers: {{ toJson $p.pipelines.metrics.receivers }}
      processors: {{ toJson $p.pipelines.metrics.processors }}
      exporters: [{{ if $scrape }}prometheus{{ else }}otlp_grpc/gateway{{ end }}]
    logs:
      receivers: [otlp]
      processors: {{ toJson $p.pipelines.logs.processors }}
      exporters: [{{ if $c.loki.enabled }}otlp_grpc/gateway{{ else }}debug/drop{{ end }}]
    traces:
      receivers: [otlp]
      processors: {{ toJson $p.pipelines.traces.processors }}
      exporters: [span_metrics{{ if $c.traces.enabled }}, otlp_grpc/gateway{{ end }}]
{{- end -}}
