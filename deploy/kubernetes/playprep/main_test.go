package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func testOptions(dir string) options {
	return options{
		dir:           dir,
		image:         "localhost/kvsync:t",
		appImage:      "localhost/app:t",
		baseURL:       "http://127.0.0.1:1/client/v4",
		token:         "tok",
		metricsListen: "127.0.0.1:0",
	}
}

// TestPrepare: the shipped manifests become a ConfigMap and one Pod per
// replica, with exactly the local changes README.md lists.
func TestPrepare(t *testing.T) {
	out, secretJSON, err := prepare(testOptions(".."))
	if err != nil {
		t.Fatal(err)
	}
	var shipped appsv1.Deployment
	if err := decode("../deployment.yaml", &shipped); err != nil {
		t.Fatal(err)
	}
	replicas := int(*shipped.Spec.Replicas)
	docs := bytes.Split(out, []byte("---\n"))
	if len(docs) != 1+replicas {
		t.Fatalf("%d documents, want a ConfigMap and %d Pods", len(docs), replicas)
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(docs[0], &cm); err != nil || cm.Kind != "ConfigMap" {
		t.Fatalf("first document: %v (kind %q)", err, cm.Kind)
	}
	conf := cm.Data["kvsync.yaml"]
	if !strings.Contains(conf, "\nmetrics_listen: 127.0.0.1:0\n") || strings.Contains(conf, "0.0.0.0") {
		t.Errorf("metrics_listen not moved to loopback:\n%s", conf)
	}
	if strings.Contains(conf, "leader_election:") || strings.Contains(conf, "lease_name:") || !strings.Contains(conf, "\napi:\n") || !strings.Contains(conf, "namespace_id:") {
		t.Errorf("want leader_election and lease_name gone, the rest kept:\n%s", conf)
	}
	pods := make([]corev1.Pod, replicas)
	for i := range pods {
		if err := yaml.UnmarshalStrict(docs[1+i], &pods[i]); err != nil || pods[i].Kind != "Pod" {
			t.Fatalf("document %d: %v (kind %q)", i+2, err, pods[i].Kind)
		}
		want := shipped.Name + "-" + strconv.Itoa(i)
		if pods[i].Name != want || pods[i].Labels["app.kubernetes.io/name"] != "site" {
			t.Errorf("pod %d: name %q labels %v, want %s and the template's labels", i, pods[i].Name, pods[i].Labels, want)
		}
		// Each replica's emptyDirs are its own, as in a cluster.
		var empty []string
		for _, v := range pods[i].Spec.Volumes {
			if v.Projected != nil {
				t.Errorf("pod %s keeps projected volume %q", pods[i].Name, v.Name)
			}
			if v.EmptyDir != nil {
				empty = append(empty, v.Name)
			}
		}
		if !slices.Equal(empty, []string{want + "-site-data", want + "-kvsync-state"}) {
			t.Errorf("pod %s: emptyDirs %v, want its own site-data and kvsync-state", want, empty)
		}
		for _, c := range pods[i].Spec.Containers {
			for _, m := range c.VolumeMounts {
				if !slices.ContainsFunc(pods[i].Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
					t.Errorf("pod %s container %s mounts %q, which it does not define", want, c.Name, m.Name)
				}
			}
		}
	}
	spec := pods[0].Spec
	if len(spec.InitContainers) != 0 {
		t.Errorf("init containers left: %v", spec.InitContainers)
	}
	if !spec.HostNetwork || spec.RestartPolicy != corev1.RestartPolicyAlways {
		t.Errorf("hostNetwork %v, restartPolicy %q", spec.HostNetwork, spec.RestartPolicy)
	}
	if len(spec.Containers) != 2 || spec.Containers[0].Name != sidecar || spec.Containers[1].Name != app {
		t.Fatalf("containers %v, want kvsync then app", spec.Containers)
	}
	kv, a := spec.Containers[0], spec.Containers[1]
	if kv.Image != "localhost/kvsync:t" || a.Image != "localhost/app:t" || kv.ImagePullPolicy != corev1.PullNever || a.ImagePullPolicy != corev1.PullNever {
		t.Errorf("images %s (%s), %s (%s)", kv.Image, kv.ImagePullPolicy, a.Image, a.ImagePullPolicy)
	}
	if kv.RestartPolicy != nil || kv.StartupProbe != nil || kv.ReadinessProbe != nil || kv.LivenessProbe != nil || kv.Ports != nil {
		t.Error("kvsync keeps a container restartPolicy, a probe or a port")
	}
	if kv.SecurityContext == nil || kv.SecurityContext.ReadOnlyRootFilesystem == nil || !*kv.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("kvsync lost its read-only root")
	}
	var baseURL string
	for _, e := range kv.Env {
		if e.Name == "CLOUDFLARE_API_BASE_URL" {
			baseURL = e.Value
		}
		if e.Name == "POD_NAMESPACE" {
			t.Error("POD_NAMESPACE kept: podman 4.3 cannot set it from metadata.namespace")
		}
	}
	if baseURL != "http://127.0.0.1:1/client/v4" {
		t.Errorf("CLOUDFLARE_API_BASE_URL %q", baseURL)
	}
	if len(a.Command) != 3 || a.Command[2] != appScript {
		t.Errorf("app command %q", a.Command)
	}
	var secret map[string]string
	if err := json.Unmarshal(secretJSON, &secret); err != nil {
		t.Fatal(err)
	}
	if tok, err := base64.StdEncoding.DecodeString(secret["api-token"]); err != nil || string(tok) != "tok" {
		t.Errorf("secret %s: want api-token base64(tok)", secretJSON)
	}
}

// TestPrepareRefuses: a manifest that no longer has the shape the changes
// rely on is an error, not a silently different play.
func TestPrepareRefuses(t *testing.T) {
	tests := []struct{ name, file, old, new, want string }{
		{"no native sidecar", "deployment.yaml", "          restartPolicy: Always\n", "", "native sidecar"},
		{"no app", "deployment.yaml", "- name: app\n", "- name: web\n", "no app container"},
		{"metrics_listen twice", "configmap.yaml", "    log_level: info\n", "    log_level: info\n    metrics_listen: 127.0.0.1:1\n", "metrics_listen"},
		{"token elsewhere", "deployment.yaml", "name: kvsync-cloudflare", "name: other", "Secret"},
		{"lease name quoted", "configmap.yaml", "lease_name: kvsync-site", "\"lease_name\": kvsync-site", "still sets lease_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range []string{"configmap.yaml", "deployment.yaml", "secret.example.yaml"} {
				b, err := os.ReadFile(filepath.Join("..", f))
				if err != nil {
					t.Fatal(err)
				}
				if f == tt.file {
					if strings.Count(string(b), tt.old) != 1 {
						t.Fatalf("%s holds %q %d times, want once: update the case", f, tt.old, strings.Count(string(b), tt.old))
					}
					b = []byte(strings.Replace(string(b), tt.old, tt.new, 1))
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, _, err := prepare(testOptions(dir))
			t.Log(err)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
