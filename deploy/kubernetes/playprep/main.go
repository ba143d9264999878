// Command playprep turns the example manifests of deploy/kubernetes into one
// multi-document YAML that `podman kube play` (podman 4.3, no registry, no
// cluster) can run on one machine, changing only what a local run needs: the
// ConfigMap, then one Pod per replica of the Deployment, named
// <deployment>-0, -1, .... It
// is run by play-test.sh; every change is listed in ../README.md ("Played
// under podman in CI") and each is commented below with why it is needed.
//
// Usage:
//
//	go run ./deploy/kubernetes/playprep -dir deploy/kubernetes \
//	    -image localhost/kvsync:play -app-image localhost/kvsync-play-app:test \
//	    -api-base-url http://127.0.0.1:PORT/client/v4 -token TOKEN \
//	    -metrics-listen 127.0.0.1:0 -secret-json secret.json >play.yaml
//	podman secret create kvsync-cloudflare secret.json
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	yamlv3 "gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	sidecar = "kvsync"
	app     = "app"
	// The app's replacement script writes the same bytes on every start, so
	// a pod played again has nothing new to publish (the shipped app stamps
	// the time into its page, which a replay would legitimately rewrite).
	appScript = `set -e
publish() { printf '%s' "$2" > "/data/.$1.tmp"; mv "/data/.$1.tmp" "/data/$1"; }
publish index.html '<!doctype html>
<p>written by the app container</p>
'
publish site.css 'body { font-family: sans-serif; }
'
while true; do sleep 60; done
`
)

type options struct {
	dir, image, appImage, baseURL, token, metricsListen string
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "deploy/kubernetes", "directory of the example manifests")
	flag.StringVar(&o.image, "image", "", "local reference of the kvsync image")
	flag.StringVar(&o.appImage, "app-image", "", "local reference of the app image")
	flag.StringVar(&o.baseURL, "api-base-url", "", "the emulator's API base URL")
	flag.StringVar(&o.token, "token", "", "the API token the emulator accepts")
	flag.StringVar(&o.metricsListen, "metrics-listen", "", "kvsync's metrics address on the host's loopback")
	var secretOut string
	flag.StringVar(&secretOut, "secret-json", "", "`file` to write the token's podman secret to")
	flag.Parse()
	out, secretJSON, err := prepare(o)
	if err == nil && secretOut == "" {
		err = errors.New("-secret-json is required")
	}
	if err == nil {
		err = os.WriteFile(secretOut, secretJSON, 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "playprep:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}

// decode reads one manifest strictly, as the API server would.
func decode(file string, v any) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	strict, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if len(strict) > 0 {
		return fmt.Errorf("%s: %v", file, errors.Join(strict...))
	}
	return nil
}

func prepare(o options) (manifest, secretJSON []byte, err error) {
	for name, v := range map[string]string{"-image": o.image, "-app-image": o.appImage, "-api-base-url": o.baseURL, "-token": o.token, "-metrics-listen": o.metricsListen} {
		if v == "" {
			return nil, nil, fmt.Errorf("%s is required", name)
		}
	}
	var cm corev1.ConfigMap
	var secret corev1.Secret
	var dep appsv1.Deployment
	if err := decode(filepath.Join(o.dir, "configmap.yaml"), &cm); err != nil {
		return nil, nil, err
	}
	if err := decode(filepath.Join(o.dir, "secret.example.yaml"), &secret); err != nil {
		return nil, nil, err
	}
	if err := decode(filepath.Join(o.dir, "deployment.yaml"), &dep); err != nil {
		return nil, nil, err
	}

	// The token the emulator accepts instead of the placeholder. podman 4.3
	// stores a Secret document's data as YAML but reads it for secretKeyRef
	// as JSON (containers/podman#16269), so the Secret is not played: the
	// test creates a podman secret of the same name holding what secretKeyRef
	// reads, a JSON object of base64 values (written to -secret-json).
	ref := secretRef(dep)
	if ref == nil || ref.Name != secret.Name {
		return nil, nil, fmt.Errorf("deployment.yaml's %s token does not come from the Secret %q", sidecar, secret.Name)
	}
	if _, ok := secret.StringData[ref.Key]; !ok {
		return nil, nil, fmt.Errorf("secret.example.yaml has no %s", ref.Key)
	}
	secretJSON, err = json.Marshal(map[string][]byte{ref.Key: []byte(o.token)})
	if err != nil {
		return nil, nil, err
	}

	// The pod shares the host's network (below), where 0.0.0.0:9464 would
	// take the host's port and open it to the host's network: kvsync listens
	// on loopback instead (127.0.0.1:0, a port the kernel picks, which the
	// test reads from the log).
	conf, err := setMetricsListen(cm.Data["kvsync.yaml"], o.metricsListen)
	if err != nil {
		return nil, nil, err
	}
	// kube play has no API server to hold a Lease: the played replicas run
	// with election off (kvsync's default), each a writer. What one writer
	// among many does is tested against a real kube-apiserver instead.
	conf, err = withoutElection(conf)
	if err != nil {
		return nil, nil, err
	}
	cm.Data["kvsync.yaml"] = conf

	spec := &dep.Spec.Template.Spec
	var kv *corev1.Container
	var inits []corev1.Container
	for _, c := range spec.InitContainers {
		if c.Name == sidecar && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			c := c
			kv = &c
			continue
		}
		inits = append(inits, c)
	}
	if kv == nil {
		return nil, nil, errors.New("deployment.yaml has no native sidecar (init container kvsync with restartPolicy: Always)")
	}
	// podman 4.3 runs init containers to completion before the others and
	// knows no native sidecars: kvsync, which never completes, becomes an
	// ordinary container of the pod, listed first so it starts first.
	kv.RestartPolicy = nil
	spec.InitContainers = inits
	// No registry: both images are built locally (kustomize's image
	// mapping, which kube play ignores, would name a registry).
	kv.Image = o.image
	kv.ImagePullPolicy = corev1.PullNever
	// The emulator stands in for api.cloudflare.com.
	kv.Env = append(kv.Env, corev1.EnvVar{Name: "CLOUDFLARE_API_BASE_URL", Value: o.baseURL})
	// podman turns an httpGet probe into a curl run inside the container
	// (the image has no curl) on a systemd timer (this machine has no
	// systemd): the test asks /healthz and /readyz itself, from the host.
	kv.StartupProbe, kv.ReadinessProbe, kv.LivenessProbe = nil, nil, nil
	// With the host's network a containerPort is a port of the host: kvsync
	// listens on a kernel-chosen loopback port (-metrics-listen) instead.
	kv.Ports = nil
	// podman 4.3 knows neither projected volumes (the ServiceAccount token,
	// for an API server kube play does not have) nor the downward API's
	// metadata.namespace (the Lease's namespace): with election off kvsync
	// reads neither.
	var vols []corev1.Volume
	for _, v := range spec.Volumes {
		if v.Projected != nil {
			kv.VolumeMounts = slices.DeleteFunc(kv.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == v.Name })
			continue
		}
		vols = append(vols, v)
	}
	spec.Volumes = vols
	kv.Env = slices.DeleteFunc(kv.Env, func(e corev1.EnvVar) bool {
		return e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
	})
	spec.Containers = append([]corev1.Container{*kv}, spec.Containers...)
	found := false
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if c.Name != app {
			continue
		}
		found = true
		c.Image = o.appImage
		c.ImagePullPolicy = corev1.PullNever
		c.Command = []string{"/bin/sh", "-c", appScript}
	}
	if !found {
		return nil, nil, errors.New("deployment.yaml has no app container")
	}
	// Loopback reaches the emulator on the host only from the host's network.
	spec.HostNetwork = true
	// kvsync restarts when it exits (the kubelet restarts a sidecar; a
	// Deployment's pod restarts its containers).
	spec.RestartPolicy = corev1.RestartPolicyAlways

	// podman 4.3 plays a Deployment's replicas as pods that share each
	// emptyDir (it becomes a named volume of the volume's name): three
	// kvsync processes on one state directory and one /data, which no
	// cluster would give them. One Pod per replica, each with its own
	// emptyDirs (named <pod>-<volume>), is what Kubernetes runs.
	n := 1
	if dep.Spec.Replicas != nil {
		n = int(*dep.Spec.Replicas)
	}
	objs := []any{&cm}
	for i := range n {
		name := dep.Name + "-" + strconv.Itoa(i)
		p := &corev1.Pod{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Labels:      dep.Spec.Template.Labels,
				Annotations: dep.Spec.Template.Annotations,
			},
			Spec: *spec.DeepCopy(),
		}
		renamed := map[string]string{}
		for j := range p.Spec.Volumes {
			v := &p.Spec.Volumes[j]
			if v.EmptyDir != nil {
				renamed[v.Name] = name + "-" + v.Name
				v.Name = renamed[v.Name]
			}
		}
		for j := range p.Spec.Containers {
			for k := range p.Spec.Containers[j].VolumeMounts {
				m := &p.Spec.Containers[j].VolumeMounts[k]
				if r, ok := renamed[m.Name]; ok {
					m.Name = r
				}
			}
		}
		objs = append(objs, p)
	}

	var buf bytes.Buffer
	for i, obj := range objs {
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, nil, err
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(b)
	}
	return buf.Bytes(), secretJSON, nil
}

// secretRef is the secretKeyRef the kvsync sidecar reads its token from.
func secretRef(dep appsv1.Deployment) *corev1.SecretKeySelector {
	for _, c := range dep.Spec.Template.Spec.InitContainers {
		if c.Name != sidecar {
			continue
		}
		for _, e := range c.Env {
			if e.Name == "CLOUDFLARE_API_TOKEN" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				return e.ValueFrom.SecretKeyRef
			}
		}
	}
	return nil
}

// withoutElection removes leader_election (the top-level block) and each
// sync's lease_name from kvsync's config, keeping the rest as shipped.
func withoutElection(conf string) (string, error) {
	var lines []string
	inBlock := false
	for _, l := range strings.Split(conf, "\n") {
		top := l != "" && l[0] != ' '
		switch {
		case strings.HasPrefix(l, "leader_election:"):
			inBlock = true
			continue
		case inBlock && !top:
			continue
		case strings.HasPrefix(strings.TrimSpace(l), "lease_name:"):
			continue
		}
		inBlock = false
		lines = append(lines, l)
	}
	out := strings.Join(lines, "\n")
	var check struct {
		LeaderElection any `yaml:"leader_election"`
		Syncs          []map[string]any
	}
	if err := yamlv3.Unmarshal([]byte(out), &check); err != nil {
		return "", fmt.Errorf("kvsync.yaml without leader_election: %w", err)
	}
	if check.LeaderElection != nil {
		return "", errors.New("kvsync.yaml still sets leader_election")
	}
	for i, s := range check.Syncs {
		if _, ok := s["lease_name"]; ok {
			return "", fmt.Errorf("kvsync.yaml: syncs[%d] still sets lease_name", i)
		}
	}
	return out, nil
}

// setMetricsListen replaces metrics_listen in kvsync's config, keeping the
// rest (and its comments) as shipped.
func setMetricsListen(conf, addr string) (string, error) {
	var lines []string
	n := 0
	for _, l := range strings.Split(conf, "\n") {
		if strings.HasPrefix(l, "metrics_listen:") {
			l = "metrics_listen: " + addr
			n++
		}
		lines = append(lines, l)
	}
	if n != 1 {
		return "", fmt.Errorf("the ConfigMap's kvsync.yaml sets metrics_listen %d times, want once", n)
	}
	out := strings.Join(lines, "\n")
	var check map[string]any
	if err := yamlv3.Unmarshal([]byte(out), &check); err != nil {
		return "", err
	}
	if check["metrics_listen"] != addr {
		return "", fmt.Errorf("metrics_listen is %v after the change", check["metrics_listen"])
	}
	return out, nil
}
