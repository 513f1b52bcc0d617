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

{{/* S3 ------------------------------------------------------------------------------------ */}}
{{- define "primer.s3SecretName" -}}
{{- if .Values.minio.enabled -}}
{{ .Values.minio.existingSecret | default (printf "%s-s3" (include "primer.fullname" .)) }}
{{- else -}}
{{ required "externalS3.existingSecret is required when minio.enabled is false" .Values.externalS3.existingSecret }}
{{- end }}
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

{{- define "primer.redisPasswordSecret" -}}
{{- if not .Values.redis.enabled }}{{ .Values.redis.external.existingSecret }}{{ end }}
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
     only from Secrets; the Redis password is spliced into the URL by Kubernetes' $(VAR). */}}
{{- define "primer.env" -}}
- name: HOME
  value: /tmp
- name: PRIMER_DATA
  value: {{ .Values.storageRoot | quote }}
{{- with include "primer.s3Endpoint" . }}
- name: PRIMER_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "primer.s3SecretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "primer.s3SecretName" . }}
      key: AWS_SECRET_ACCESS_KEY
{{- $auth := "" }}
{{- with include "primer.redisPasswordSecret" . }}
{{- $auth = ":$(REDIS_PASSWORD)@" }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.redis.external.passwordKey }}
{{- end }}
- name: PRIMER_REDIS_URL
  value: {{ printf "redis://%s%s:%s/%s" $auth (include "primer.redisHost" .) (include "primer.redisPort" .) (include "primer.redisDb" .) | quote }}
- name: PRIMER_CELERY_VISIBILITY_TIMEOUT
  value: {{ .Values.celery.visibilityTimeout | quote }}
{{- with include "primer.teacherUrl" . }}
- name: PRIMER_TEACHER_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.teacher.apiKeySecret }}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: OPENAI_API_KEY
{{- end }}
{{- end }}

{{/* A Celery worker Deployment: (dict "root" $ "component" "generation") ------------------ */}}
{{- define "primer.worker" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- $autoscaled := and (eq .component "generation") $v.autoscaling.enabled }}
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
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
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
            {{- include "primer.env" $root | nindent 12 }}
            - name: PRIMER_CELERY_QUEUE
              value: {{ $v.queue | quote }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
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
