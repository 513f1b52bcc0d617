{{/* One replica of the training PyTorchJob; see training-pytorchjob.yaml. */}}
{{- define "primer.trainingReplica" }}
{{- $j := .j }}
{{- /* intra-op threads per process: the pod's whole CPUs over its processes (as the builder) */}}
{{- $cpu := toString $j.cpu }}
{{- $cores := hasSuffix "m" $cpu | ternary (divf (trimSuffix "m" $cpu | float64) 1000) (float64 $cpu) }}
{{- $threads := maxf 1 (floor (divf $cores (float64 .procs))) | int }}
replicas: {{ .replicas }}
restartPolicy: OnFailure
template:
  metadata:
    labels:
      {{- .labels | nindent 6 }}
      primer.dev/run: {{ $j.name }}
  spec:
    automountServiceAccountToken: false
    securityContext:
      runAsNonRoot: true
      runAsUser: 10001
      runAsGroup: 10001
      fsGroup: 10001
      seccompProfile: {type: RuntimeDefault}
    containers:
      - name: pytorch
        image: {{ .image }}
        imagePullPolicy: {{ .pullPolicy }}
        command: ["torchrun", "--nproc-per-node", "{{ .procs }}", "-m", "model.train",
                  "--preset", {{ $j.preset | quote }}, "--data", {{ $j.data | quote }},
                  "--output", {{ $j.output | quote }}, "--resume", "auto"
                  {{- if $j.steps }}, "--steps", "{{ int $j.steps }}"{{ end }}]
        env:
          - {name: HOME, value: /tmp}
          - {name: PYTHONUNBUFFERED, value: "1"}
          {{- with .endpoint }}
          - {name: PRIMER_S3_ENDPOINT, value: {{ . | quote }}}
          {{- end }}
          - name: AWS_ACCESS_KEY_ID
            valueFrom: {secretKeyRef: {name: {{ .secret }}, key: AWS_ACCESS_KEY_ID}}
          - name: AWS_SECRET_ACCESS_KEY
            valueFrom: {secretKeyRef: {name: {{ .secret }}, key: AWS_SECRET_ACCESS_KEY}}
          - {name: OMP_NUM_THREADS, value: "{{ $threads }}"}
        resources:
          requests:
            cpu: {{ $j.cpu | quote }}
            memory: {{ $j.memory | quote }}
            {{- if $j.gpusPerNode }}
            nvidia.com/gpu: "{{ int $j.gpusPerNode }}"
            {{- end }}
          limits:
            cpu: {{ $j.cpu | quote }}
            memory: {{ $j.memory | quote }}
            {{- if $j.gpusPerNode }}
            nvidia.com/gpu: "{{ int $j.gpusPerNode }}"
            {{- end }}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: ["ALL"]}
        volumeMounts:
          - {name: dshm, mountPath: /dev/shm}
          - {name: tmp, mountPath: /tmp}
    volumes:
      - name: dshm
        emptyDir: {medium: Memory, sizeLimit: {{ $j.shmSize | quote }}}
      - name: tmp
        emptyDir: {sizeLimit: 10Gi}
{{- end }}
