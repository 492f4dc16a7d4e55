{{/* Names and labels. */}}
{{- define "shadowroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shadowroute.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "shadowroute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "shadowroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shadowroute
{{- end -}}

{{/* Selector labels of one component: include with (list $ "router"). */}}
{{- define "shadowroute.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "shadowroute.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "shadowroute.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shadowroute.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "shadowroute.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "shadowroute.secretName" -}}
{{- default (printf "%s-secrets" (include "shadowroute.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Paths inside the container; the image's CMD and docs/deploy.md use the same ones. */}}
{{- define "shadowroute.configDir" -}}/etc/shadowroute{{- end -}}
{{- define "shadowroute.configPath" -}}/etc/shadowroute/config.yaml{{- end -}}
{{- define "shadowroute.dataDir" -}}/var/lib/shadowroute{{- end -}}
{{- define "shadowroute.tlsDir" -}}/etc/shadowroute/kafka-tls{{- end -}}

{{- define "shadowroute.transportKind" -}}
{{- $t := .Values.config.transport | default dict -}}
{{- $t.kind | default "embedded" -}}
{{- end -}}

{{/* The config file: values.config merged with what the chart owns. */}}
{{- define "shadowroute.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $cfg "listen" (dict "host" "0.0.0.0" "port" (int .Values.ports.listen)) -}}
{{- $admin := deepCopy (get $cfg "admin" | default dict) -}}
{{- $_ = set $admin "host" "0.0.0.0" -}}
{{- $_ = set $admin "port" (int .Values.ports.admin) -}}
{{- /* Host names the admin plane answers (IP addresses always): in-cluster Service names. */}}
{{- $full := include "shadowroute.fullname" . -}}
{{- $hosts := list "*.svc" "*.svc.cluster.local" (printf "%s-router" $full) (printf "%s-comparator" $full) (printf "%s-router.%s" $full .Release.Namespace) (printf "%s-comparator.%s" $full .Release.Namespace) -}}
{{- $_ = set $admin "allowed_hosts" (concat (get $admin "allowed_hosts" | default list) $hosts | uniq) -}}
{{- $_ = set $cfg "admin" $admin -}}
{{- $transport := deepCopy (get $cfg "transport" | default dict) -}}
{{- $spool := deepCopy (get $transport "spool" | default dict) -}}
{{- $_ = set $spool "path" (printf "%s/spool" (include "shadowroute.dataDir" .)) -}}
{{- $_ = set $transport "spool" $spool -}}
{{- if .Values.kafka.tls.enabled -}}
{{- $sec := deepCopy (get $transport "security" | default dict) -}}
{{- $dir := include "shadowroute.tlsDir" . -}}
{{- $_ = set $sec "ssl_cafile" (printf "%s/%s" $dir .Values.kafka.tls.caKey) -}}
{{- if .Values.kafka.tls.certKey -}}
{{- $_ = set $sec "ssl_certfile" (printf "%s/%s" $dir .Values.kafka.tls.certKey) -}}
{{- end -}}
{{- if .Values.kafka.tls.keyKey -}}
{{- $_ = set $sec "ssl_keyfile" (printf "%s/%s" $dir .Values.kafka.tls.keyKey) -}}
{{- end -}}
{{- $_ = set $transport "security" $sec -}}
{{- end -}}
{{- $_ = set $cfg "transport" $transport -}}
{{- $comp := deepCopy (get $cfg "comparator" | default dict) -}}
{{- $_ = set $comp "state_path" (printf "%s/state.sqlite" (include "shadowroute.dataDir" .)) -}}
{{- $_ = set $cfg "comparator" $comp -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Shutdown timing: the router needs preStop + shutdown_timeout_s + mirror_drain_s. */}}
{{- define "shadowroute.routerMinGrace" -}}
{{- $proxy := .Values.config.proxy | default dict -}}
{{- $shutdown := 10.0 -}}
{{- if hasKey $proxy "shutdown_timeout_s" -}}{{- $shutdown = $proxy.shutdown_timeout_s -}}{{- end -}}
{{- $drain := 2.0 -}}
{{- if hasKey $proxy "mirror_drain_s" -}}{{- $drain = $proxy.mirror_drain_s -}}{{- end -}}
{{- addf .Values.router.preStopSleepSeconds $shutdown $drain -}}
{{- end -}}

{{- define "shadowroute.routerGrace" -}}
{{- $min := include "shadowroute.routerMinGrace" . | float64 -}}
{{- $set := .Values.router.terminationGracePeriodSeconds | int -}}
{{- if eq $set 0 -}}
{{- add (ceil $min | int) 5 -}}
{{- else if le (float64 $set) $min -}}
{{- fail (printf "router.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + proxy.shutdown_timeout_s + proxy.mirror_drain_s (%v)" $set $min) -}}
{{- else -}}
{{- $set -}}
{{- end -}}
{{- end -}}

{{/* Environment: bootstrap from values, secrets from the Secret. */}}
{{- define "shadowroute.env" -}}
{{- $secret := include "shadowroute.secretName" . -}}
{{- $existing := .Values.secrets.existingSecret -}}
{{- if .Values.kafka.bootstrap }}
- name: SHADOWROUTE_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
{{- end }}
{{- range $var, $field := dict "SHADOWROUTE_API_TOKEN" "apiToken" "SHADOWROUTE_KAFKA_SASL_USERNAME" "kafkaSaslUsername" "SHADOWROUTE_KAFKA_SASL_PASSWORD" "kafkaSaslPassword" }}
{{- /* The API token is always set: given, or generated by the chart (secret.yaml). */}}
{{- if or $existing (index $.Values.secrets $field) (eq $field "apiToken") }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ index $.Values.secrets.keys $field }}
      {{- if $existing }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "shadowroute.hasSecretValues" -}}true{{- end -}}

{{/* The admin API token: secrets.apiToken, else the one this release generated before (kept
across upgrades), else a new random one. */}}
{{- define "shadowroute.apiToken" -}}
{{- if .Values.secrets.apiToken -}}
{{- .Values.secrets.apiToken -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "shadowroute.secretName" .) -}}
{{- $key := .Values.secrets.keys.apiToken -}}
{{- if and $old $old.data (index $old.data $key) -}}
{{- index $old.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "shadowroute.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .Values.ports.admin }}}
  periodSeconds: 2
  failureThreshold: {{ div .Values.probes.startupTimeoutSeconds 2 | max 1 }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .Values.ports.admin }}}
  initialDelaySeconds: {{ .Values.probes.livenessInitialDelaySeconds }}
  periodSeconds: {{ .Values.probes.periodSeconds }}
  failureThreshold: {{ .Values.probes.failureThreshold }}
readinessProbe:
  httpGet: {path: /readyz, port: {{ .Values.ports.admin }}}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{- define "shadowroute.commonMounts" -}}
- name: shadowroute-config
  mountPath: {{ include "shadowroute.configDir" . }}
  readOnly: true
- name: shadowroute-data
  mountPath: {{ include "shadowroute.dataDir" . }}
- name: shadowroute-tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.enabled }}
- name: shadowroute-kafka-tls
  mountPath: {{ include "shadowroute.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "shadowroute.commonVolumes" -}}
- name: shadowroute-config
  configMap:
    name: {{ include "shadowroute.fullname" . }}-config
- name: shadowroute-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.kafka.tls.enabled }}
- name: shadowroute-kafka-tls
  secret:
    secretName: {{ required "kafka.tls.secretName is required when kafka.tls.enabled" .Values.kafka.tls.secretName }}
{{- end }}
{{- end -}}

{{/* The router container: used by the gateway Deployment and the sidecar snippet alike. */}}
{{- define "shadowroute.routerContainer" -}}
name: shadowroute
image: {{ include "shadowroute.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: [serve, -c, {{ include "shadowroute.configPath" . }}, --workers, {{ .Values.router.workers | quote }}]
ports:
  - name: sr-http
    containerPort: {{ .Values.ports.listen }}
    protocol: TCP
  - name: sr-admin
    containerPort: {{ .Values.ports.admin }}
    protocol: TCP
env:
  - name: SHADOWROUTE_COMPONENT
    value: router
  {{- include "shadowroute.env" . | trim | nindent 2 }}
  {{- with .Values.router.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- include "shadowroute.probes" . | nindent 0 }}
lifecycle:
  preStop:
    exec:
      command: [sleep, {{ .Values.router.preStopSleepSeconds | quote }}]
resources:
  {{- toYaml .Values.router.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  {{- include "shadowroute.commonMounts" . | nindent 2 }}
{{- end -}}

{{- define "shadowroute.routerVolumes" -}}
{{ include "shadowroute.commonVolumes" . }}
- name: shadowroute-data
  emptyDir:
    sizeLimit: {{ .Values.router.dataSizeLimit }}
{{- end -}}

{{/* Checks that stop a bad install early, with a message naming the value. */}}
{{- define "shadowroute.validate" -}}
{{- $kind := include "shadowroute.transportKind" . -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) -}}
{{- fail (printf "mode must be gateway or sidecar, got %q" .Values.mode) -}}
{{- end -}}
{{- if eq $kind "kafka" -}}
{{- $t := .Values.config.transport | default dict -}}
{{- if not (or .Values.kafka.bootstrap $t.bootstrap) -}}
{{- fail "kafka transport needs kafka.bootstrap (or config.transport.bootstrap)" -}}
{{- end -}}
{{- $partitions := 6 -}}
{{- if and $t.topics (hasKey $t.topics "partitions") -}}{{- $partitions = int $t.topics.partitions -}}{{- end -}}
{{- if gt (int .Values.comparator.replicas) $partitions -}}
{{- fail (printf "comparator.replicas (%d) exceeds the partition count (%d): extra consumers would idle" (int .Values.comparator.replicas) $partitions) -}}
{{- end -}}
{{- if and .Values.comparator.persistence.enabled (gt (int .Values.comparator.replicas) 1) -}}
{{- fail "comparator.persistence needs comparator.replicas 1 (one ReadWriteOnce claim); use the emptyDir for more" -}}
{{- end -}}
{{- else if eq .Values.mode "gateway" -}}
{{- if or (gt (int .Values.router.replicas) 1) .Values.router.autoscaling.enabled -}}
{{- fail "the embedded transport keeps comparator state in the pod: use router.replicas 1 without autoscaling, or transport kafka" -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.mode "sidecar") (eq (int .Values.ports.listen) (int .Values.sidecar.modelPort)) -}}
{{- fail "sidecar.modelPort must differ from ports.listen (the router takes the pod's port)" -}}
{{- end -}}
{{- end -}}
