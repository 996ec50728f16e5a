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

{{/* The chart's mode: single (one Deployment) or scaleout (ingest and analysis tiers on Kafka). */}}
{{- define "webrtc-observer.mode" -}}
{{- if not (has .Values.mode (list "single" "scaleout")) }}
{{- fail (printf "mode must be single or scaleout, got %v" .Values.mode) }}
{{- end }}
{{- .Values.mode }}
{{- end }}

{{/* The name of a scale-out tier's objects: (list $ "ingest") → <fullname>-ingest, within 63 characters. */}}
{{- define "webrtc-observer.tierName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "webrtc-observer.fullname" $root | trunc 54 | trimSuffix "-") (index . 1) }}
{{- end }}

{{/* Labels of an object of a tier (dict "root" $ "component" "ingest"); no component label in mode single. */}}
{{- define "webrtc-observer.componentLabels" -}}
{{- include "webrtc-observer.labels" .root }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "webrtc-observer.componentSelectorLabels" -}}
{{- include "webrtc-observer.selectorLabels" .root }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* The collector port numbers by name: samples 7080, metrics 9464, metrics-<i> 9464 + i. */}}
{{- define "webrtc-observer.containerPort" -}}
{{- if eq . "samples" }}7080{{ else if eq . "metrics" }}9464{{ else }}{{ add 9464 (trimPrefix "metrics-" .) }}{{ end }}
{{- end }}

{{/*
A collector Deployment. Takes a dict: root ($), name, component ("" in mode single), replicas, resources,
config (the rendered collector.yaml, for the checksum; the ConfigMap has the Deployment's name), ports
(container port names) and startupProbe/readinessProbe/livenessProbe.
*/}}
{{- define "webrtc-observer.deployment" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  labels:
    {{- include "webrtc-observer.componentLabels" . | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  selector:
    matchLabels:
      {{- include "webrtc-observer.componentSelectorLabels" . | nindent 6 }}
  template:
    metadata:
      annotations:
        # A new configuration restarts the pods.
        checksum/config: {{ .config | sha256sum }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "webrtc-observer.componentLabels" . | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      automountServiceAccountToken: false
      securityContext:
        {{- toYaml $values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      containers:
        - name: collector
          image: "{{ $values.image.repository }}:{{ $values.image.tag | default $root.Chart.AppVersion }}"
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: ["run", "--config", "/etc/webrtc-observer/collector.yaml"]
          ports:
            {{- range $port := .ports }}
            - name: {{ $port }}
              containerPort: {{ include "webrtc-observer.containerPort" $port }}
              protocol: TCP
            {{- end }}
          env:
            - name: OBSERVER_FILE
              value: /var/lib/webrtc-observer/reports.jsonl
            {{- if $values.salt.existingSecret }}
            - name: OBSERVER_SALT
              valueFrom:
                secretKeyRef:
                  name: {{ $values.salt.existingSecret }}
                  key: {{ $values.salt.key }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with .startupProbe }}
          startupProbe:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .readinessProbe }}
          readinessProbe:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .livenessProbe }}
          livenessProbe:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          resources:
            {{- toYaml .resources | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/webrtc-observer
              readOnly: true
            - name: data
              mountPath: /var/lib/webrtc-observer
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: config
          configMap:
            name: {{ .name }}
        - name: data
          {{- toYaml $values.dataVolume | nindent 10 }}
        - name: tmp
          emptyDir: {}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/*
mode scaleout: the `reports` pipeline of .Values.config, which both tiers are derived from, after the checks
that rendering either tier needs (as YAML; fromYaml it).
*/}}
{{- define "webrtc-observer.scaleout.pipeline" -}}
{{- $config := .Values.config }}
{{- $pipelines := dig "service" "pipelines" dict $config }}
{{- if not (hasKey $pipelines "reports") }}
{{- fail "mode scaleout: config.service.pipelines.reports is required: both tiers are derived from it" }}
{{- end }}
{{- $others := without (keys $pipelines | sortAlpha) "reports" }}
{{- if $others }}
{{- fail (printf "mode scaleout: only config.service.pipelines.reports is split into the two tiers; remove (set to null) %s" (join ", " $others)) }}
{{- end }}
{{- if gt (int .Values.workers) 1 }}
{{- fail "mode scaleout: workers must be 1; scale the tiers with scaleout.ingest.replicas and scaleout.analysis.replicas" }}
{{- end }}
{{- $reports := get $pipelines "reports" }}
{{- if not (has "prometheus" ($reports.exporters | default list)) }}
{{- fail "mode scaleout: config.service.pipelines.reports.exporters must list prometheus: both tiers serve /metrics on the metrics port, and the analysis tier's probes ask its /health" }}
{{- end }}
{{- range $kind := list "receivers" "processors" "exporters" }}
{{- range $id := (get $reports $kind | default list) }}
{{- if not (hasKey (get $config $kind | default dict) $id) }}
{{- fail (printf "mode scaleout: config.service.pipelines.reports.%s lists %s, which config.%s does not define" $kind $id $kind) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $id := $.Values.scaleout.ingest.processors }}
{{- if not (hasKey ($config.processors | default dict) $id) }}
{{- fail (printf "mode scaleout: scaleout.ingest.processors lists %s, which config.processors does not define" $id) }}
{{- end }}
{{- end }}
{{- $partitions := int .Values.scaleout.topics.samples.partitions }}
{{- if lt $partitions 1 }}
{{- fail "mode scaleout: scaleout.topics.samples.partitions must be at least 1" }}
{{- end }}
{{- toYaml $reports }}
{{- end }}

{{/* mode scaleout: the brokers of the three topics (as YAML; fromYamlArray it). */}}
{{- define "webrtc-observer.scaleout.brokers" -}}
{{- $brokers := .Values.scaleout.kafka.brokers | default .Values.kafka.brokers }}
{{- if not $brokers }}
{{- fail "mode scaleout: scaleout.kafka.brokers (or kafka.brokers) must list at least one broker (host:port)" }}
{{- end }}
{{- toYaml $brokers }}
{{- end }}

{{/* config.service without its pipelines and workers, with the given pipelines (dict "service" "pipelines"). */}}
{{- define "webrtc-observer.scaleout.service" -}}
{{- $service := omit (deepCopy (.service | default dict)) "pipelines" "workers" }}
{{- $_ := set $service "pipelines" .pipelines }}
{{- toYaml $service }}
{{- end }}

{{/*
mode scaleout, the ingest tier: the reports pipeline's receivers, scaleout.ingest.processors (none by
default), and a kafka exporter writing the samples (encoding: samples) to the samples topic, plus the
prometheus exporter.
*/}}
{{- define "webrtc-observer.ingestConfig" -}}
{{- $values := .Values }}
{{- $config := deepCopy $values.config }}
{{- $reports := include "webrtc-observer.scaleout.pipeline" . | fromYaml }}
{{- $brokers := include "webrtc-observer.scaleout.brokers" . | fromYamlArray }}
{{- $receivers := dict }}
{{- range $id := $reports.receivers }}
{{- $_ := set $receivers $id (get $config.receivers $id) }}
{{- end }}
{{- $processors := dict }}
{{- range $id := $values.scaleout.ingest.processors }}
{{- $_ := set $processors $id (get $config.processors $id) }}
{{- end }}
{{- $samples := dict "brokers" $brokers "topic" $values.scaleout.topics.samples.name "encoding" "samples" "tick_interval" $values.scaleout.ingest.tickInterval }}
{{- $samples = merge $samples (deepCopy ($values.scaleout.ingest.exporterOptions | default dict)) }}
{{- $exporters := dict "kafka" $samples "prometheus" (get $config.exporters "prometheus") }}
{{- $pipeline := dict "receivers" $reports.receivers "processors" ($values.scaleout.ingest.processors | default list) "exporters" (list "kafka" "prometheus") }}
{{- $service := include "webrtc-observer.scaleout.service" (dict "service" $config.service "pipelines" (dict "samples" $pipeline)) | fromYaml }}
{{- toYaml (dict "receivers" $receivers "processors" $processors "exporters" $exporters "service" $service) }}
{{- end }}

{{/*
mode scaleout, the analysis tier: a kafka receiver in the consumer group reading the samples topic, with
its state in the state topic, then the reports pipeline's processors (less scaleout.ingest.processors) and
exporters; every kafka exporter gets the brokers and the reports topic.
*/}}
{{- define "webrtc-observer.analysisConfig" -}}
{{- $values := .Values }}
{{- $scaleout := $values.scaleout }}
{{- $config := deepCopy $values.config }}
{{- $reports := include "webrtc-observer.scaleout.pipeline" . | fromYaml }}
{{- $brokers := include "webrtc-observer.scaleout.brokers" . | fromYamlArray }}
{{- $state := dict "topic" $scaleout.topics.state.name "checkpoint_interval" $scaleout.analysis.checkpointInterval }}
{{- $receiver := dict
  "brokers" $brokers "topic" $scaleout.topics.samples.name "group_id" $scaleout.analysis.groupId
  "session_timeout" $scaleout.analysis.sessionTimeout "auto_offset_reset" $scaleout.analysis.autoOffsetReset
  "encoding" "samples" "state" $state }}
{{- $receiver = merge $receiver (deepCopy ($scaleout.analysis.receiverOptions | default dict)) }}
{{- $names := list }}
{{- $processors := dict }}
{{- range $id := ($reports.processors | default list) }}
{{- if not (has $id $scaleout.ingest.processors) }}
{{- $names = append $names $id }}
{{- $_ := set $processors $id (get $config.processors $id) }}
{{- end }}
{{- end }}
{{- $exporters := dict }}
{{- range $id := $reports.exporters }}
{{- $exporter := get $config.exporters $id }}
{{- if or (eq $id "kafka") (hasPrefix "kafka/" $id) }}
{{- $exporter = $exporter | default dict }}
{{- $_ := set $exporter "brokers" $brokers }}
{{- with $scaleout.topics.reports.name }}
{{- $_ := set $exporter "topic" . }}
{{- end }}
{{- end }}
{{- $_ := set $exporters $id $exporter }}
{{- end }}
{{- $pipeline := dict "receivers" (list "kafka") "processors" $names "exporters" $reports.exporters }}
{{- $service := include "webrtc-observer.scaleout.service" (dict "service" $config.service "pipelines" (dict "reports" $pipeline)) | fromYaml }}
{{- toYaml (dict "receivers" (dict "kafka" $receiver) "processors" $processors "exporters" $exporters "service" $service) }}
{{- end }}
