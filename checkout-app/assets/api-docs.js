// Starts Swagger UI on the page's OpenAPI document (served by the same
// service, named by the data-openapi-url attribute). Nothing is loaded from
// another host: the validator badge, which would call one, is off.
window.addEventListener("load", function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 1,
  });
});
