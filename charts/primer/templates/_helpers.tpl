{{/* Names ------------------------------------------------------------------------------ */}}
{{- define "primer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "primer.fullname" -}}
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

{{- define "primer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: (dict "root" $ "component" "name") ------------------------------------------- */}}
{{- define "primer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "primer.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "primer.labels" -}}
helm.sh/chart: {{ include "primer.chart" .root }}
{{ include "primer.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: primer
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------- */}}
{{- define "primer.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* Secrets generated once and kept: an upgrade reads the live Secret back (Helm's lookup),
     so a password never changes under running pods. (dict "root" $ "name" … "key" … "length" N)
     → the base64 value for data.<key>. `helm template` has no cluster: a fresh value each time. */}}
{{- define "primer.keptSecretValue" -}}
{{- $live := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $live $live.data (hasKey $live.data .key) -}}
{{ index $live.data .key }}
{{- else -}}
{{ randAlphaNum (int .length) | b64enc }}
{{- end }}
{{- end }}

{{/* S3 ------------------------------------------------------------------------------------ */}}
{{/* The components that get S3 credentials of their own (minio.users, externalS3.componentSecrets). */}}
{{- define "primer.s3Components" -}}
gateway operator curation generation evaluation training
{{- end }}

{{/* MinIO's root user: only MinIO itself and the bucket Job ever mount it. */}}
{{- define "primer.s3RootSecretName" -}}
{{ .Values.minio.existingSecret | default (printf "%s-s3" (include "primer.fullname" .)) }}
{{- end }}

{{/* A component's S3 credentials: (dict "root" $ "component" "evaluation"). */}}
{{- define "primer.s3SecretName" -}}
{{- $root := .root }}
{{- if $root.Values.minio.enabled -}}
{{ include "primer.fullname" $root }}-s3-{{ .component }}
{{- else -}}
{{ index $root.Values.externalS3.componentSecrets .component | default $root.Values.externalS3.existingSecret | required (printf "externalS3.existingSecret (or externalS3.componentSecrets.%s) is required when minio.enabled is false" .component) }}
{{- end }}
{{- end }}

{{/* storageRoot s3://bucket/prefix → bucket, and prefix without slashes at either end. */}}
{{- define "primer.storageBucket" -}}
{{ (splitn "/" 2 (trimPrefix "s3://" .Values.storageRoot))._0 }}
{{- end }}

{{- define "primer.storagePrefix" -}}
{{ (splitn "/" 2 (trimPrefix "s3://" .Values.storageRoot))._1 | default "" | trimAll "/" }}
{{- end }}

{{/* A component's MinIO policy (IAM JSON): (dict "root" $ "access" {read: […], write: […]}).
     Prefixes are relative to storageRoot; each becomes "<root prefix>/<prefix>*". */}}
{{- define "primer.s3Policy" -}}
{{- $bucket := include "primer.storageBucket" .root }}
{{- $base := include "primer.storagePrefix" .root }}
{{- $keys := dict "read" list "write" list }}
{{- range $kind := list "read" "write" }}
{{- range (index $.access $kind) }}
{{- $key := printf "%s*" . }}
{{- if $base }}{{ $key = printf "%s/%s*" $base . }}{{ end }}
{{- $_ := set $keys $kind (append (index $keys $kind) $key) }}
{{- end }}
{{- end }}
{{- $readable := concat $keys.read $keys.write }}
{{- $objects := list }}
{{- range $readable }}{{ $objects = append $objects (printf "arn:aws:s3:::%s/%s" $bucket .) }}{{ end }}
{{- $statements := list (dict "Effect" "Allow" "Action" (list "s3:GetBucketLocation") "Resource" (list (printf "arn:aws:s3:::%s" $bucket))) }}
{{- if $readable }}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:ListBucket") "Resource" (list (printf "arn:aws:s3:::%s" $bucket)) "Condition" (dict "StringLike" (dict "s3:prefix" $readable))) }}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:GetObject") "Resource" $objects) }}
{{- end }}
{{- if $keys.write }}
{{- $writable := list }}
{{- range $keys.write }}{{ $writable = append $writable (printf "arn:aws:s3:::%s/%s" $bucket .) }}{{ end }}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:PutObject" "s3:DeleteObject" "s3:AbortMultipartUpload" "s3:ListMultipartUploadParts") "Resource" $writable) }}
{{- end }}
{{- dict "Version" "2012-10-17" "Statement" $statements | toPrettyJson }}
{{- end }}

{{- define "primer.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
http://{{ include "primer.fullname" . }}-minio.{{ .Release.Namespace }}.svc:9000
{{- else -}}
{{ .Values.externalS3.endpoint }}
{{- end }}
{{- end }}

{{/* Redis --------------------------------------------------------------------------------- */}}
{{- define "primer.redisHost" -}}
{{- if .Values.redis.enabled -}}
{{ include "primer.fullname" . }}-redis.{{ .Release.Namespace }}.svc
{{- else -}}
{{ required "redis.external.host is required when redis.enabled is false" .Values.redis.external.host }}
{{- end }}
{{- end }}

{{- define "primer.redisPort" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.redis.external.port }}{{ end }}
{{- end }}

{{- define "primer.redisDb" -}}
{{- if .Values.redis.enabled }}0{{ else }}{{ .Values.redis.external.db }}{{ end }}
{{- end }}

{{/* The Secret with the Redis password: the generated one in the cluster, else the external
     one (empty: an external Redis without a password). */}}
{{- define "primer.redisPasswordSecret" -}}
{{- if .Values.redis.enabled }}{{ include "primer.fullname" . }}-redis{{ else }}{{ .Values.redis.external.existingSecret }}{{ end }}
{{- end }}

{{- define "primer.redisPasswordKey" -}}
{{- if .Values.redis.enabled }}password{{ else }}{{ .Values.redis.external.passwordKey }}{{ end }}
{{- end }}

{{/* The gateway's bearer token: the user's Secret, or the one the chart generates. */}}
{{- define "primer.gatewayTokenSecret" -}}
{{ .Values.gateway.auth.existingSecret | default (printf "%s-gateway-token" (include "primer.fullname" .)) }}
{{- end }}

{{/* The gateway's mode: as set, else cluster when the operator runs (see values.yaml). */}}
{{- define "primer.gatewayMode" -}}
{{ .Values.gateway.mode | default (ternary "cluster" "embedded" .Values.operator.enabled) }}
{{- end }}

{{/* NetworkPolicy egress rule: name resolution through the cluster DNS. */}}
{{- define "primer.dnsEgress" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}

{{/* Teacher ------------------------------------------------------------------------------- */}}
{{- define "primer.teacherUrl" -}}
{{- if .Values.teacher.enabled -}}
http://{{ include "primer.fullname" . }}-teacher.{{ .Release.Namespace }}.svc:8000/v1
{{- else -}}
{{ .Values.teacher.externalUrl }}
{{- end }}
{{- end }}

{{/* The environment every Primer process shares: storage, queue, teacher. Credentials come
     only from Secrets, each component's own S3 user; the Redis password is spliced into the
     URL by Kubernetes' $(VAR). (dict "root" $ "component" "gateway" ["s3" "gateway"]) */}}
{{- define "primer.env" -}}
{{- $root := .root }}
{{- $s3 := include "primer.s3SecretName" (dict "root" $root "component" (.s3 | default .component)) }}
- name: HOME
  value: /tmp
- name: PRIMER_DATA
  value: {{ $root.Values.storageRoot | quote }}
{{- with include "primer.s3Endpoint" $root }}
- name: PRIMER_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: AWS_SECRET_ACCESS_KEY
{{- with $root }}
{{- $auth := "" }}
{{- with include "primer.redisPasswordSecret" . }}
{{- $auth = ":$(REDIS_PASSWORD)@" }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "primer.redisPasswordKey" $root }}
{{- end }}
- name: PRIMER_REDIS_URL
  value: {{ printf "redis://%s%s:%s/%s" $auth (include "primer.redisHost" .) (include "primer.redisPort" .) (include "primer.redisDb" .) | quote }}
- name: PRIMER_CELERY_VISIBILITY_TIMEOUT
  value: {{ .Values.celery.visibilityTimeout | quote }}
{{- with include "primer.teacherUrl" . }}
- name: PRIMER_TEACHER_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- /* Only the workers that call the teacher hold its key. */}}
{{- if eq .component "generation" }}
{{- with $root.Values.teacher.apiKeySecret }}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: OPENAI_API_KEY
{{- end }}
{{- end }}
{{- end }}

{{/* A Celery worker Deployment: (dict "root" $ "component" "generation") ------------------ */}}
{{- define "primer.worker" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- $autoscaled := and (eq .component "generation") $v.autoscaling.enabled }}
{{- /* workers that run model- or teacher-written code: the sandbox's pod shape */}}
{{- $sandboxed := and (has .component (list "generation" "evaluation")) $root.Values.sandbox.userNamespaces }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "primer.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "primer.labels" . | nindent 4 }}
  annotations:
    # Celery workers serve no HTTP; `celery inspect ping` goes through the broker, so a Redis
    # outage would restart every worker and cut their units short.
    checkov.io/skip1: CKV_K8S_8=Celery workers have no health endpoint
    checkov.io/skip2: CKV_K8S_9=Celery workers take work from the queue, not from a Service
    {{- if $sandboxed }}
    # The sandbox's shape: root and these capabilities hold only inside the pod's own user
    # namespace (hostUsers: false); each program runs as its own uid (primer/sandbox/README.md).
    checkov.io/skip3: CKV_K8S_20=SYS_ADMIN requires allowPrivilegeEscalation; user-namespaced pod
    checkov.io/skip4: CKV_K8S_23=root only in the pod's user namespace (hostUsers false)
    checkov.io/skip5: CKV_K8S_25=the sandbox adds SYS_ADMIN SETUID SETGID CHOWN in its user namespace
    checkov.io/skip6: CKV_K8S_39=SYS_ADMIN in the pod's user namespace for per-program namespaces
    {{- end }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "primer.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "primer.labels" . | nindent 8 }}
    spec:
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $sandboxed }}
      hostUsers: false
      securityContext:
        seccompProfile: {type: RuntimeDefault}
      {{- else }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- end }}
      # Celery's warm shutdown on SIGTERM finishes the running unit before the pod goes.
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      containers:
        - name: worker
          image: {{ include "primer.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          # One unit at a time, prefetch 1: a stopping worker holds no queued units.
          command: ["celery", "-A", "primer.executor.celery_app", "worker",
                    "-Q", {{ $v.queue | quote }}, "--pool", "prefork", "--concurrency", "1",
                    "--prefetch-multiplier", "1", "--hostname", "{{ .component }}@%h",
                    "--loglevel", "INFO"]
          env:
            {{- include "primer.env" . | nindent 12 }}
            - name: PRIMER_CELERY_QUEUE
              value: {{ $v.queue | quote }}
            {{- if and $sandboxed $root.Values.sandbox.allowMissing }}
            - name: PRIMER_SANDBOX_ALLOW_MISSING
              value: {{ $root.Values.sandbox.allowMissing | quote }}
            {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- if $sandboxed }}
            {{- include "primer.sandboxSecurityContext" . | nindent 12 }}
            {{- else }}
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
            {{- end }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 2Gi
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* A PodDisruptionBudget: (dict "root" $ "component" "gateway") --------------------------- */}}
{{- define "primer.pdb" -}}
{{- $root := .root }}
{{- if and $root.Values.podDisruptionBudget.enabled (index $root.Values .component).enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "primer.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "primer.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $root.Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "primer.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* The container of a pod that runs model- or teacher-written code (primer/sandbox/README.md;
primer/k8s/evaluation_job.py builds the same). allowPrivilegeEscalation stays unset: the API
refuses false beside SYS_ADMIN. */}}
{{- define "primer.sandboxSecurityContext" -}}
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
privileged: false
readOnlyRootFilesystem: true
procMount: Unmasked
appArmorProfile: {type: Unconfined}
capabilities:
  drop: ["ALL"]
  add: ["SYS_ADMIN", "SETUID", "SETGID", "CHOWN"]
{{- end }}
