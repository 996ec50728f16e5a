{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "webrtc-observer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless the release already has it. */}}
{{- define "webrtc-observer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "webrtc-observer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "webrtc-observer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webrtc-observer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "webrtc-observer.labels" -}}
helm.sh/chart: {{ include "webrtc-observer.chart" . }}
{{ include "webrtc-observer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The collector configuration: .Values.config, with .Values.kafka.brokers (and topic) filled into a kafka
exporter (`kafka` or `kafka/<name>`) of the config.
*/}}
{{- define "webrtc-observer.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $exporters := get $config "exporters" | default dict }}
{{- range $id, $exporter := $exporters }}
{{- if or (eq $id "kafka") (hasPrefix "kafka/" $id) }}
{{- $kafka := $exporter | default dict }}
{{- if not $.Values.kafka.brokers }}
{{- fail (printf "exporter %s: kafka.brokers must list at least one broker (host:port)" $id) }}
{{- end }}
{{- $_ := set $kafka "brokers" $.Values.kafka.brokers }}
{{- if $.Values.kafka.topic }}
{{- $_ := set $kafka "topic" $.Values.kafka.topic }}
{{- end }}
{{- $_ := set $exporters $id $kafka }}
{{- end }}
{{- end }}
{{- if gt (int .Values.workers) 1 }}
{{- $service := get $config "service" | default dict }}
{{- $_ := set $service "workers" (int .Values.workers) }}
{{- $_ := set $config "service" $service }}
{{- end }}
{{- toYaml $config }}
{{- end }}
