{{/* Names and labels shared by every object of the chart. */}}

{{- define "traintel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (default .Chart.Name .Values.nameOverride) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (default .Chart.Name .Values.nameOverride) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "traintel.labels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The pod selector labels the OpenTelemetry Operator puts on a collector's pods
     (internal/manifests/manifestutils SelectorLabels): instance is "<namespace>.<cr name>". */}}
{{- define "traintel.collectorSelector" -}}
{{ include "traintel.operatorLabels" . }}
app.kubernetes.io/instance: {{ include "traintel.collectorInstance" . }}
{{- end -}}

{{/* The selector labels every collector's pods share, whichever CR they come from. */}}
{{- define "traintel.operatorLabels" -}}
app.kubernetes.io/managed-by: opentelemetry-operator
app.kubernetes.io/part-of: opentelemetry
app.kubernetes.io/component: opentelemetry-collector
{{- end -}}

{{/* The operator's instance label of a CR's pods. Call with (dict "namespace" .. "name" ..). */}}
{{- define "traintel.collectorInstance" -}}
{{- printf "%s.%s" .namespace .name | trunc 63 -}}
{{- end -}}

{{/* The gateway's OTLP/gRPC address (the operator's Service is "<cr name>-collector"). */}}
{{- define "traintel.gatewayEndpoint" -}}
{{- printf "%s-gateway-collector.%s.svc:4317" (include "traintel.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Exporter headers: plain values, and ${env:VAR} references to variables that
     traintel.secretEnv fills from Secrets. Call with (dict "spec" <block> "prefix" "RW"). */}}
{{- define "traintel.headers" -}}
{{- $headers := dict -}}
{{- range $k, $v := .spec.headers }}{{ $_ := set $headers $k $v }}{{ end -}}
{{- range $i, $ref := .spec.headersFromSecrets }}
{{- $_ := set $headers $ref.header (printf "${env:TRAINTEL_%s_HEADER_%d}" $.prefix $i) -}}
{{- end -}}
{{- if $headers }}
headers:
  {{- toYaml $headers | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "traintel.secretEnv" -}}
{{- range $i, $ref := .spec.headersFromSecrets }}
- name: {{ printf "TRAINTEL_%s_HEADER_%d" $.prefix $i }}
  valueFrom:
    secretKeyRef:
      name: {{ required "headersFromSecrets[].secretName is required" $ref.secretName }}
      key: {{ required "headersFromSecrets[].key is required" $ref.key }}
{{- end }}
{{- end -}}

{{/* The parts of a collector spec every tier shares. Call with (dict "root" $ "tier" <values>). */}}
{{- define "traintel.collectorCommon" -}}
{{- $c := .root.Values.collector -}}
image: {{ $c.image }}
imagePullPolicy: {{ $c.imagePullPolicy }}
upgradeStrategy: none
resources:
  {{- toYaml .tier.resources | nindent 2 }}
securityContext:
  {{- toYaml $c.securityContext | nindent 2 }}
networkPolicy:
  # The chart's own NetworkPolicy (templates/networkpolicy.yaml) is narrower than the operator's,
  # which admits every source on the collector's ports.
  enabled: false
{{- end -}}

{{/* The collector's own telemetry: metrics on 8888 named as the alerts expect; on the
     forwarder's address (127.0.0.1 in a training pod's sidecar: nothing listens beyond the pod). */}}
{{- define "traintel.collectorTelemetry" -}}
telemetry:
  logs:
    level: info
  metrics:
    level: normal
    readers:
      - pull:
          exporter:
            prometheus:
              host: {{ .listen | default "0.0.0.0" }}
              port: 8888
              without_type_suffix: true
              without_units: true
{{- end -}}

{{/* "true" when the gateway has something to do: remote write, logs to Loki or traces to Tempo
     (with collector.metricsMode scrape and neither Loki nor traces, the agents do it all). */}}
{{- define "traintel.gatewayRendered" -}}
{{- $c := .Values.collector -}}
{{- if and $c.enabled $c.gateway.enabled (or (eq $c.metricsMode "remoteWrite") $c.loki.enabled $c.traces.enabled) -}}
true
{{- end -}}
{{- end -}}

{{/* The labels the Prometheus Operator's selectors match: `release: <prometheusRelease>`
     (kube-prometheus-stack's default selector) and the object's own extra labels. Call with
     (dict "root" $ "labels" <extra labels>). */}}
{{- define "traintel.selectedLabels" -}}
{{- with .root.Values.prometheusRelease }}
release: {{ . | quote }}
{{- end }}
{{- with .labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
