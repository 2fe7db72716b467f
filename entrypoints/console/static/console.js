// Draws every <canvas data-chart='{...}'> with Chart.js: axis titles, gridlines, readable ticks.
(function () {
  Chart.defaults.font.size = 13;
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var spec = JSON.parse(canvas.dataset.chart);
    var datasets = spec.series.map(function (s) {
      var d = { label: s.label, data: s.data, backgroundColor: s.color, borderColor: s.color };
      if (spec.type === "line") { d.fill = false; d.tension = 0.2; d.pointRadius = 3; }
      return d;
    });
    if (spec.marker !== undefined && spec.marker !== null) {
      datasets.push({ type: "scatter", label: spec.marker_label, pointRadius: 8, pointStyle: "triangle",
        backgroundColor: "#c8453c", borderColor: "#c8453c",
        data: [{ x: spec.marker, y: spec.marker_y }] });
    }
    new Chart(canvas, {
      type: spec.type,
      data: { labels: spec.labels, datasets: datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { display: datasets.length > 1 } },
        scales: {
          x: { title: { display: true, text: spec.x_title }, grid: { display: true } },
          y: { title: { display: true, text: spec.y_title }, beginAtZero: true, grid: { display: true } }
        }
      }
    });
  });
  var slider = document.getElementById("as-of-slider");
  if (slider) {
    var times = JSON.parse(slider.dataset.times);
    var label = document.getElementById("as-of-label");
    slider.addEventListener("input", function () { label.textContent = times[slider.value]; });
    slider.addEventListener("change", function () {
      var url = new URL(window.location.href);
      url.searchParams.set("as_of", times[slider.value]);
      window.location.href = url.toString();
    });
  }
})();
